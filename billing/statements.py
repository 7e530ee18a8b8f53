"""The hand-written SQL of billing's hot paths (PostgreSQL only; SQLite takes the ORM's way).

Each statement is written out as PostgreSQL runs it, with the real table and column names; the
golden files under tests/golden_sql/ hold the same text and tests/test_statements.py compares them,
so a model change that would break one cannot pass unnoticed. Counters only ever change by adding
in the database, never by writing back a value read before: PostgreSQL re-checks an UPDATE's WHERE
clause after waiting for the row lock, which is what keeps two concurrent admissions from both
taking the last tokens."""

from .throttle import EPSILON

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


# What the minute bucket has drawn at %(now)s (billing.throttle.bucket_used, in SQL): what it had
# drawn, less limit/60 a second since, between 0 and the limit.
_BUCKET_USED = """LEAST(%(per_minute)s::float8, GREATEST(0, throttle.bucket_used
        - GREATEST(0, EXTRACT(EPOCH FROM
            %(now)s::timestamptz - COALESCE(throttle.bucket_at, %(now)s::timestamptz)))::float8
          * %(per_minute)s::float8 / 60))"""

# After QUOTA_RESERVE took the run (`reserved` has its row): one more run in flight and one run
# from the minute bucket, on the user's Throttle row, created on the user's first run. A limit
# that refuses sets a NOT NULL column to NULL, which fails the whole statement: the quota taken
# before it is undone with it, so a refusal leaves nothing, and admission then goes the general
# way (billing.quota.quota_reserve), which tells which limit refused. A NULL limit is off.
ADMIT_THROTTLE = f"""
INSERT INTO billing_throttle AS throttle (user_id, active_runs, bucket_used, bucket_at)
SELECT %(user_id)s,
       CASE WHEN %(concurrent)s::integer IS NULL OR %(concurrent)s::integer >= 1 THEN 1 END,
       CASE WHEN %(per_minute)s::integer IS NULL THEN 0
            WHEN %(per_minute)s::integer >= 1 THEN 1 END,
       CASE WHEN %(per_minute)s::integer IS NOT NULL THEN %(now)s::timestamptz END
  FROM reserved
    ON CONFLICT (user_id) DO UPDATE
   SET active_runs = CASE WHEN %(concurrent)s::integer IS NULL
                            OR throttle.active_runs < %(concurrent)s::integer
                          THEN throttle.active_runs + 1 END,
       bucket_used = CASE WHEN %(per_minute)s::integer IS NULL THEN throttle.bucket_used
                          WHEN {_BUCKET_USED} + 1 <= %(per_minute)s::integer + {EPSILON}
                          THEN {_BUCKET_USED} + 1 END,
       bucket_at = CASE WHEN %(per_minute)s::integer IS NULL THEN throttle.bucket_at
                        ELSE GREATEST(%(now)s::timestamptz, throttle.bucket_at) END
RETURNING throttle.bucket_used, throttle.active_runs
"""

# After ADMIT_THROTTLE (it always yields the one row, or fails): the run counted on its key's
# row for the period, and its tokens reserved there if they fit the key's monthly_token_limit
# (a NULL room: no limit, or a 0-token reservation); refused the same way as ADMIT_THROTTLE.
ADMIT_KEY = """
INSERT INTO billing_keyusage AS key_usage (key_id, period, user_id, runs, tokens_used, tokens_reserved)
SELECT %(key_id)s::uuid, %(period)s, %(user_id)s, 1, 0,
       CASE WHEN %(key_room)s::bigint IS NULL OR %(key_room)s::bigint >= 0 THEN %(tokens)s END
  FROM throttled
 WHERE %(key_id)s::uuid IS NOT NULL
    ON CONFLICT (key_id, period) DO UPDATE
   SET runs = key_usage.runs + 1,
       tokens_reserved = CASE WHEN %(key_room)s::bigint IS NULL
                                OR key_usage.tokens_used <= %(key_room)s::bigint - key_usage.tokens_reserved
                              THEN key_usage.tokens_reserved + %(tokens)s END
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
    """The whole admission in one statement: QUOTA_RESERVE, ADMIT_THROTTLE, ADMIT_KEY, the run's
    INSERT and its day's usage line (USAGE_DAY_COUNT), which select from the reservation, so nothing
    is written unless everything was taken. The rows are locked in the order every settlement takes
    them too (the user's counters, the throttle, the key's counters), so the two cannot deadlock.
    `insert_run` is the run table's INSERT ... SELECT ... FROM reserved, which the runs app owns. It
    yields the runs used, what the bucket has drawn and the user's runs in flight with this one, or no
    row when QUOTA_RESERVE refused."""
    return (
        f"WITH reserved AS ({QUOTA_RESERVE}), throttled AS ({ADMIT_THROTTLE}),"
        f" key_reserved AS ({ADMIT_KEY}), inserted AS ({insert_run}), counted AS ({USAGE_DAY_COUNT})"
        " SELECT reserved.runs_used, throttled.bucket_used, throttled.active_runs FROM reserved, throttled"
    )


# The writes of a settlement, reading the settled run from a relation named `done` with the columns
# run_id, user_id, agent_id, key_id, created_at, period, model, input_tokens, output_tokens,
# multiplier, billed_tokens, reserved_tokens and settled_at: the ledger row, the per-model counters
# and the day's usage line of what it billed (none when billed_tokens is NULL: the provider reported
# nothing); the user's counters, its reservation released; its concurrency slot; its key's month.
# `counters` returns the tokens used and, riding along, the plan's tier and token override, for the
# token alerts without a query of their own. The runs app puts its run UPDATE in front as `done`, so
# the whole settlement is one statement.
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
),
slots AS (
    -- The run no longer counts against max_concurrent_runs. After `counters` (the join reads it
    -- first), so the rows are locked in admission's order.
    INSERT INTO billing_throttle AS throttle (user_id, active_runs, bucket_used)
    SELECT done.user_id, 0, 0
      FROM done LEFT JOIN counters ON true
        ON CONFLICT (user_id) DO UPDATE
       SET active_runs = GREATEST(throttle.active_runs - 1, 0)
    RETURNING throttle.user_id
),
key_counters AS (
    -- The key's month: its reservation replaced by the bill, after `slots` for the lock order.
    UPDATE billing_keyusage AS key_usage
       SET tokens_used = key_usage.tokens_used + COALESCE(done.billed_tokens, 0),
           tokens_reserved = key_usage.tokens_reserved - done.reserved_tokens
      FROM done, slots
     WHERE key_usage.key_id = done.key_id
       AND key_usage.period = done.period
    RETURNING key_usage.key_id
),
usage_day AS (
    -- After `key_counters` (the join reads it first): admission takes its usage line last too.
    INSERT INTO billing_usageday AS line
           (user_id, day, model, agent_id, key_id, runs, input_tokens, output_tokens, billed_tokens)
    SELECT done.user_id, (done.created_at AT TIME ZONE 'UTC')::date, done.model,
           COALESCE(done.agent_id, '00000000-0000-0000-0000-000000000000'),
           COALESCE(done.key_id, '00000000-0000-0000-0000-000000000000'),
           0, done.input_tokens, done.output_tokens, done.billed_tokens
      FROM done LEFT JOIN (SELECT count(*) FROM key_counters) AS after_keys ON true
     WHERE done.billed_tokens IS NOT NULL
        ON CONFLICT (user_id, day, model, agent_id, key_id) DO UPDATE
       SET input_tokens = line.input_tokens + excluded.input_tokens,
           output_tokens = line.output_tokens + excluded.output_tokens,
           billed_tokens = line.billed_tokens + excluded.billed_tokens
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
