"""The one query of every API request, hand-written (see maschina.db.rows for why): an active key
by its lookup, with its user, the user's plan and the committed rules revision. The golden file
tests/golden_sql/accounts_active_key.sql holds it as PostgreSQL runs it."""

import functools

from django.contrib.auth import get_user_model

from billing.models import Plan
from maschina.db.rows import ModelRows

from .models import ApiKey


@functools.cache
def active_key(vendor: str) -> tuple[str, ModelRows, ModelRows, ModelRows]:
    """(sql, key rows, user rows, plan rows) for this database vendor: the column lists come from
    the models, so a new field is read without a change here."""
    keys, users, plans = ModelRows(ApiKey, "k"), ModelRows(get_user_model(), "u"), ModelRows(Plan, "p")
    sql = f"""
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
