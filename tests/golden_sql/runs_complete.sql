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
SELECT counters.* FROM done LEFT JOIN counters ON true
