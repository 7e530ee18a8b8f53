"""The one query of every API request, hand-written (see maschina.db.rows for why): an active key
by its lookup, with its user, the user's plan and the committed rules revision; a revoked key is not
found from the next request on, in every process, because nothing of it is cached. The golden file
tests/golden_sql/accounts_active_key.sql holds it as PostgreSQL runs it."""

import functools

from django.contrib.auth import get_user_model

from billing.models import Plan
from maschina.db.rows import ModelRows

from .models import ApiKey

# On PostgreSQL the lookup also stamps the key's last_used_at, at most once a minute (CONTRACT
# section 10), in the same statement: a data-modifying WITH that matches no row in the common case,
# so it costs no write and no round trip. It stamps before the SELECT's snapshot, which reads the
# previous value. SQLite has no such WITH: accounts.key_lookup stamps it with an UPDATE of its own.
TOUCH_SECS = 60
_TOUCH = f"""WITH touched AS (
    UPDATE accounts_apikey
       SET last_used_at = statement_timestamp()
     WHERE lookup = %s
       AND revoked_at IS NULL
       AND (last_used_at IS NULL OR last_used_at < statement_timestamp() - interval '{TOUCH_SECS} seconds')
)"""


@functools.cache
def active_key(vendor: str) -> tuple[str, ModelRows, ModelRows, ModelRows]:
    """(sql, key rows, user rows, plan rows) for this database vendor: the column lists come from
    the models, so a new field is read without a change here. The statement takes the lookup once
    per %s."""
    keys, users, plans = ModelRows(ApiKey, "k"), ModelRows(get_user_model(), "u"), ModelRows(Plan, "p")
    sql = f"""{_TOUCH if vendor == "postgresql" else ""}
SELECT {keys.columns()},
       {users.columns()},
       {plans.columns()},
       (SELECT value FROM routing_rulesrevision WHERE id = 1)
  FROM accounts_apikey k
  JOIN auth_user u ON u.id = k.user_id
  LEFT JOIN billing_plan p ON p.user_id = u.id
 WHERE k.lookup = %s
   AND k.revoked_at IS NULL
   AND u.is_active
"""
    return sql, keys, users, plans
