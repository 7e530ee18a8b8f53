UPDATE agents_run
   SET status = 'executing',
       started_at = %(now)s,
       deadline_at = %(deadline_at)s,
       heartbeat_at = %(now)s,
       claim = %(claim)s,
       claims = claims + 1,
       provider_calls = provider_calls + 1
 WHERE id = %(id)s
   AND status = 'queued'
   AND timeout_secs = %(timeout_secs)s
RETURNING "id", "user_id", "agent_id", "key_id", "idempotency_key", "request_digest", "tier", "status", "requested_model", "model", "catalog_model", "provider", "multiplier", "system_prompt", "input", "output", "timeout_secs", "max_tokens", "period", "reserved_tokens", "input_tokens", "output_tokens", "billed_tokens", "error", "provider_calls", "claim", "claims", "heartbeat_at", "deadline_at", "dispatches", "redispatch_at", "created_at", "dispatched_at", "started_at", "finished_at", "settled_at"
