"""The API key of a request, with its user and plan, in one query (accounts.statements)."""

import datetime as dt

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from maschina.db.rows import fetch_one

from . import statements
from .models import ApiKey


def active_key(lookup: str) -> tuple[ApiKey | None, int]:
    """The active key of an active user with this lookup, its .user and .user.plan loaded as
    select_related would (or None); and the committed rules revision (0 before the first edit)."""
    sql, keys, users, plans = statements.active_key(connection.vendor)
    row = fetch_one(sql, [lookup] * sql.count("%s"))
    if row is None:
        return None, 0
    key = keys.load(row[: len(keys)])
    if connection.vendor != "postgresql":
        _touch(key)
    user = users.load(row[len(keys) : len(keys) + len(users)])
    plan_values = row[len(keys) + len(users) : -1]
    if plan_values[0] is not None:  # its primary key: the LEFT JOIN found a plan
        user.plan = plans.load(plan_values)
    else:  # cached as absent, as select_related does: user.plan raises DoesNotExist without a query
        type(user).plan.related.set_cached_value(user, None)
    key.user = user
    return key, row[-1] or 0


def _touch(key: ApiKey) -> None:
    """last_used_at at most once a minute, on databases whose lookup cannot stamp it itself; the
    conditional UPDATE keeps concurrent requests to one write a minute. Not a change the audit
    records (a queryset of the base manager, not the audited one)."""
    now = timezone.now()
    stale = now - dt.timedelta(seconds=statements.TOUCH_SECS)
    if key.last_used_at is None or key.last_used_at < stale:
        ApiKey._base_manager.filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=key.pk
        ).update(last_used_at=now)
