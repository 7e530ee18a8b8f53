UPDATE billing_usageperiod
   SET tokens_reserved = tokens_reserved + %(tokens)s,
       runs_used = runs_used + 1
 WHERE user_id = %(user_id)s
   AND period = %(period)s
   AND (%(token_room)s::bigint IS NULL OR tokens_used <= %(token_room)s::bigint - tokens_reserved)
   AND (%(runs_before)s::bigint IS NULL OR runs_used <= %(runs_before)s::bigint)
   AND (%(runs_alert)s::bigint IS NULL OR (runs_used + 1) * 100 < %(runs_alert)s::bigint)
RETURNING runs_used
