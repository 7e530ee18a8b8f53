"""The hand-written SQL of billing's hot paths (PostgreSQL only; SQLite takes the ORM's way).

Each statement is written out as PostgreSQL runs it, with the real table and column names; the
golden files under tests/golden_sql/ hold the same text and tests/test_statements.py compares them,
so a model change that would break one cannot pass unnoticed. Counters only ever change by adding
in the database, never by writing back a value read before: PostgreSQL re-checks an UPDATE's WHERE
clause after waiting for the row lock, which is what keeps two concurrent admissions from both
taking the last tokens."""

# Count one run and reserve its tokens on the user's counter row for the period, only if it fits.
# A NULL room or run limit means that check is off (an unlimited quota, or a 0-token reservation,
# which CONTRACT section 6 admits even at a token limit of 0). The same text serves every case, so
# the server prepares it once.
QUOTA_RESERVE = """
UPDATE billing_usageperiod
   SET tokens_reserved = tokens_reserved + %(tokens)s,
       runs_used = runs_used + 1
 WHERE user_id = %(user_id)s
   AND period = %(period)s
   AND (%(token_room)s::bigint IS NULL OR tokens_used <= %(token_room)s::bigint - tokens_reserved)
   AND (%(runs_before)s::bigint IS NULL OR runs_used <= %(runs_before)s::bigint)
   AND (%(runs_alert)s::bigint IS NULL OR (runs_used + 1) * 100 < %(runs_alert)s::bigint)
RETURNING runs_used
"""


# Count the admitted run on its day's usage line (billing.history), only if the reservation was taken.
USAGE_DAY_COUNT = """
INSERT INTO billing_usageday AS line
       (user_id, day, model, agent_id, key_id, runs, input_tokens, output_tokens, billed_tokens)
SELECT %(user_id)s, %(day)s, %(day_model)s, %(day_agent_id)s, %(day_key_id)s, 1, 0, 0, 0
  FROM reserved
    ON CONFLICT (user_id, day, model, agent_id, key_id) DO UPDATE
   SET runs = line.runs + 1
"""


def quota_reserve_inserting(insert_run: str) -> str:
    """QUOTA_RESERVE, the run's INSERT and its day's usage line in one statement: the INSERTs
    select from the reservation, so nothing is written unless the reservation was taken.
    `insert_run` is the run table's INSERT ... SELECT ... FROM reserved, which the runs app owns."""
    return (
        f"WITH reserved AS ({QUOTA_RESERVE}), inserted AS ({insert_run}), counted AS ({USAGE_DAY_COUNT})"
        "SELECT runs_used FROM reserved"
    )


# The writes of a settlement, reading the settled run from a relation named `done` with the columns
# run_id, user_id, agent_id, key_id, created_at, period, model, input_tokens, output_tokens,
# multiplier, billed_tokens, reserved_tokens and settled_at: the ledger row, the per-model counters
# and the day's usage line of what it billed (none when billed_tokens is NULL: the provider reported
# nothing), and the user's counters, its
# reservation released. `counters` returns the tokens used and, riding along, the plan's tier and
# token override, for the token alerts without a query of their own. The runs app puts its run
# UPDATE in front as `done`, so the whole settlement is one statement.
SETTLEMENT_WRITES = """
ledger AS (
    INSERT INTO billing_ledgerentry
           (run_id, user_id, period, model, input_tokens, output_tokens, multiplier, billed_tokens,
            created_at)
    SELECT run_id, user_id, period, model, input_tokens, output_tokens, multiplier, billed_tokens, settled_at
      FROM done
     WHERE billed_tokens IS NOT NULL
),
model_usage AS (
    INSERT INTO billing_modelusage AS line
           (user_id, period, model, runs, input_tokens, output_tokens, billed_tokens)
    SELECT user_id, period, model, 1, input_tokens, output_tokens, billed_tokens
      FROM done
     WHERE billed_tokens IS NOT NULL
        ON CONFLICT (user_id, period, model) DO UPDATE
       SET runs = line.runs + excluded.runs,
           input_tokens = line.input_tokens + excluded.input_tokens,
           output_tokens = line.output_tokens + excluded.output_tokens,
           billed_tokens = line.billed_tokens + excluded.billed_tokens
),
usage_day AS (
    INSERT INTO billing_usageday AS line
           (user_id, day, model, agent_id, key_id, runs, input_tokens, output_tokens, billed_tokens)
    SELECT user_id, (created_at AT TIME ZONE 'UTC')::date, model,
           COALESCE(agent_id, '00000000-0000-0000-0000-000000000000'),
           COALESCE(key_id, '00000000-0000-0000-0000-000000000000'),
           0, input_tokens, output_tokens, billed_tokens
      FROM done
     WHERE billed_tokens IS NOT NULL
        ON CONFLICT (user_id, day, model, agent_id, key_id) DO UPDATE
       SET input_tokens = line.input_tokens + excluded.input_tokens,
           output_tokens = line.output_tokens + excluded.output_tokens,
           billed_tokens = line.billed_tokens + excluded.billed_tokens
),
counters AS (
    UPDATE billing_usageperiod AS counter
       SET tokens_used = counter.tokens_used + COALESCE(done.billed_tokens, 0),
           tokens_reserved = counter.tokens_reserved - done.reserved_tokens
      FROM done
     WHERE counter.user_id = done.user_id
       AND counter.period = done.period
    RETURNING counter.tokens_used,
              (SELECT tier_id FROM billing_plan WHERE user_id = counter.user_id),
              (SELECT token_quota_override FROM billing_plan WHERE user_id = counter.user_id)
)
"""


def settlement(settle_run: str) -> str:
    """A whole settlement as one statement: `settle_run` is the run's UPDATE ... RETURNING the
    columns SETTLEMENT_WRITES reads. It yields one row, the user's counters (NULLs without a counter
    row), when that UPDATE matched, and no row when it did not."""
    return (
        f"WITH done AS ({settle_run}),{SETTLEMENT_WRITES}"
        "SELECT counters.* FROM done LEFT JOIN counters ON true"
    )
