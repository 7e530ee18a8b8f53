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
), inserted AS (INSERT INTO "agents_run" ("id", "user_id", "agent_id", "key_id", "tier", "status", "requested_model", "model", "catalog_model", "provider", "multiplier", "system_prompt", "input", "output", "timeout_secs", "max_tokens", "period", "reserved_tokens", "input_tokens", "output_tokens", "billed_tokens", "error", "provider_calls", "claim", "claims", "heartbeat_at", "deadline_at", "dispatches", "redispatch_at", "created_at", "dispatched_at", "started_at", "finished_at", "settled_at") SELECT %(run_id)s, %(run_user_id)s, %(run_agent_id)s, %(run_key_id)s, %(run_tier)s, %(run_status)s, %(run_requested_model)s, %(run_model)s, %(run_catalog_model)s, %(run_provider)s, %(run_multiplier)s, %(run_system_prompt)s, %(run_input)s, %(run_output)s, %(run_timeout_secs)s, %(run_max_tokens)s, %(run_period)s, %(run_reserved_tokens)s, %(run_input_tokens)s, %(run_output_tokens)s, %(run_billed_tokens)s, %(run_error)s, %(run_provider_calls)s, %(run_claim)s, %(run_claims)s, %(run_heartbeat_at)s, %(run_deadline_at)s, %(run_dispatches)s, %(run_redispatch_at)s, %(run_created_at)s, %(run_dispatched_at)s, %(run_started_at)s, %(run_finished_at)s, %(run_settled_at)s FROM reserved), counted AS (
INSERT INTO billing_usageday AS line
       (user_id, day, model, agent_id, key_id, runs, input_tokens, output_tokens, billed_tokens)
SELECT %(user_id)s, %(day)s, %(day_model)s, %(day_agent_id)s, %(day_key_id)s, 1, 0, 0, 0
  FROM reserved
    ON CONFLICT (user_id, day, model, agent_id, key_id) DO UPDATE
   SET runs = line.runs + 1
)SELECT runs_used FROM reserved
