"""The API key of a request, with its user and plan, in one query (accounts.statements)."""

from django.db import connection

from maschina.db.rows import fetch_one

from . import statements
from .models import ApiKey


def active_key(lookup: str) -> tuple[ApiKey | None, int]:
    """The active key of an active user with this lookup, its .user and .user.plan loaded as
    select_related would (or None); and the committed rules revision (0 before the first edit)."""
    sql, keys, users, plans = statements.active_key(connection.vendor)
    row = fetch_one(sql, [lookup])
    if row is None:
        return None, 0
    key = keys.load(row[: len(keys)])
    user = users.load(row[len(keys) : len(keys) + len(users)])
    plan_values = row[len(keys) + len(users) : -1]
    if plan_values[0] is not None:  # its primary key: the LEFT JOIN found a plan
        user.plan = plans.load(plan_values)
    else:  # cached as absent, as select_related does: user.plan raises DoesNotExist without a query
        type(user).plan.related.set_cached_value(user, None)
    key.user = user
    return key, row[-1] or 0
