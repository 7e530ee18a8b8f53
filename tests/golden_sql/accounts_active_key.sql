WITH touched AS (
    UPDATE accounts_apikey
       SET last_used_at = statement_timestamp()
     WHERE lookup = %s
       AND revoked_at IS NULL
       AND (last_used_at IS NULL OR last_used_at < statement_timestamp() - interval '60 seconds')
)
SELECT k."id", k."user_id", k."name", k."lookup", k."key_hash", k."allowed_models", k."monthly_token_limit", k."expires_at", k."created_at", k."last_used_at", k."revoked_at",
       u."id", u."password", u."last_login", u."is_superuser", u."username", u."first_name", u."last_name", u."email", u."is_staff", u."is_active", u."date_joined",
       p."id", p."user_id", p."tier_id", p."token_quota_override", p."run_quota_override", p."requests_per_minute_override", p."requests_per_minute_unlimited", p."max_concurrent_runs_override", p."max_concurrent_runs_unlimited", p."alert_webhook_url", p."alert_webhook_secret", p."updated_at",
       (SELECT value FROM routing_rulesrevision WHERE id = 1)
  FROM accounts_apikey k
  JOIN auth_user u ON u.id = k.user_id
  LEFT JOIN billing_plan p ON p.user_id = u.id
 WHERE k.lookup = %s
   AND k.revoked_at IS NULL
   AND u.is_active
