WITH reserved AS (
UPDATE billing_usageperiod
   SET tokens_reserved = tokens_reserved + %(tokens)s,
       runs_used = runs_used + 1
 WHERE user_id = %(user_id)s
   AND period = %(period)s
   AND (%(token_room)s::bigint IS NULL OR tokens_used <= %(token_room)s::bigint - tokens_reserved)
   AND (%(runs_before)s::bigint IS NULL OR runs_used <= %(runs_before)s::bigint)
   AND (%(runs_alert)s::bigint IS NULL OR (runs_used + 1) * 100 < %(runs_alert)s::bigint)
RETURNING runs_used
), throttled AS (
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
                          WHEN LEAST(%(per_minute)s::float8, GREATEST(0, throttle.bucket_used
        - GREATEST(0, EXTRACT(EPOCH FROM
            %(now)s::timestamptz - COALESCE(throttle.bucket_at, %(now)s::timestamptz)))::float8
          * %(per_minute)s::float8 / 60)) + 1 <= %(per_minute)s::integer + 1e-09
                          THEN LEAST(%(per_minute)s::float8, GREATEST(0, throttle.bucket_used
        - GREATEST(0, EXTRACT(EPOCH FROM
            %(now)s::timestamptz - COALESCE(throttle.bucket_at, %(now)s::timestamptz)))::float8
          * %(per_minute)s::float8 / 60)) + 1 END,
       bucket_at = CASE WHEN %(per_minute)s::integer IS NULL THEN throttle.bucket_at
                        ELSE GREATEST(%(now)s::timestamptz, throttle.bucket_at) END
RETURNING throttle.bucket_used, throttle.active_runs
), key_reserved AS (
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
), inserted AS (INSERT INTO "agents_run" ("id", "user_id", "agent_id", "key_id", "idempotency_key", "request_digest", "tier", "status", "requested_model", "model", "catalog_model", "provider", "multiplier", "system_prompt", "input", "output", "timeout_secs", "max_tokens", "period", "reserved_tokens", "input_tokens", "output_tokens", "billed_tokens", "error", "provider_calls", "claim", "claims", "heartbeat_at", "deadline_at", "dispatches", "redispatch_at", "created_at", "dispatched_at", "started_at", "finished_at", "settled_at") SELECT %(run_id)s, %(run_user_id)s, %(run_agent_id)s, %(run_key_id)s, %(run_idempotency_key)s, %(run_request_digest)s, %(run_tier)s, %(run_status)s, %(run_requested_model)s, %(run_model)s, %(run_catalog_model)s, %(run_provider)s, %(run_multiplier)s, %(run_system_prompt)s, %(run_input)s, %(run_output)s, %(run_timeout_secs)s, %(run_max_tokens)s, %(run_period)s, %(run_reserved_tokens)s, %(run_input_tokens)s, %(run_output_tokens)s, %(run_billed_tokens)s, %(run_error)s, %(run_provider_calls)s, %(run_claim)s, %(run_claims)s, %(run_heartbeat_at)s, %(run_deadline_at)s, %(run_dispatches)s, %(run_redispatch_at)s, %(run_created_at)s, %(run_dispatched_at)s, %(run_started_at)s, %(run_finished_at)s, %(run_settled_at)s FROM reserved), counted AS (
INSERT INTO billing_usageday AS line
       (user_id, day, model, agent_id, key_id, runs, input_tokens, output_tokens, billed_tokens)
SELECT %(user_id)s, %(day)s, %(day_model)s, %(day_agent_id)s, %(day_key_id)s, 1, 0, 0, 0
  FROM reserved
    ON CONFLICT (user_id, day, model, agent_id, key_id) DO UPDATE
   SET runs = line.runs + 1
) SELECT reserved.runs_used, throttled.bucket_used, throttled.active_runs FROM reserved, throttled
