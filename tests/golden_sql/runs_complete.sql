WITH done AS (
UPDATE agents_run
   SET status = 'completed',
       output = %(output)s,
       input_tokens = %(input_tokens)s,
       output_tokens = %(output_tokens)s,
       billed_tokens = %(billed_tokens)s,
       finished_at = %(now)s,
       settled_at = %(now)s
 WHERE id = %(id)s
   AND status = 'executing'
   AND claim = %(claim)s
   AND input_tokens IS NULL
   AND model = %(model)s
   AND multiplier = %(multiplier)s
RETURNING id AS run_id, user_id, agent_id, key_id, created_at, period, model, input_tokens,
          output_tokens, multiplier, billed_tokens, reserved_tokens, settled_at
),
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
SELECT counters.* FROM done LEFT JOIN counters ON true
