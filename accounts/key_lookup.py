"""The one query of every API request: an active key by its lookup, with its user, the user's plan
and the committed rules revision.

Django's ORM rebuilds and recompiles a select_related query on every call, which cost ~2 ms of the
~2.5 ms this query took per request on the benchmark machine (issue 6). Here the SQL is written once
per process and database vendor from the models' metadata (so a new field is selected without a
change here), and each row becomes model instances through Model.from_db, with every field's
database converters applied as the ORM applies them (SQLite returns dates as text, for one)."""
from django.contrib.auth import get_user_model
from django.db import connection

from billing.models import Plan
from routing.models import RulesRevision

from .models import ApiKey

_compiled = {}  # vendor -> (sql, [(model, attnames, [(converters, column) per field])])


def _select_list(model, alias: str, quote) -> tuple[str, list]:
    fields = model._meta.concrete_fields
    columns = ", ".join(f"{alias}.{quote(field.column)}" for field in fields)
    converters = []
    for field in fields:
        column = field.get_col(alias)
        converters.append((connection.ops.get_db_converters(column) + column.get_db_converters(connection), column))
    return columns, (model, [field.attname for field in fields], converters)


def _compile():
    quote = connection.ops.quote_name
    User = get_user_model()
    tables = {alias: quote(model._meta.db_table) for alias, model in (("k", ApiKey), ("u", User), ("p", Plan), ("r", RulesRevision))}
    parts = [_select_list(model, alias, quote) for alias, model in (("k", ApiKey), ("u", User), ("p", Plan))]
    col = lambda model, name: quote(model._meta.get_field(name).column)  # noqa: E731
    sql = (
        f"SELECT {', '.join(columns for columns, _ in parts)}, "
        f"(SELECT r.{col(RulesRevision, 'value')} FROM {tables['r']} r WHERE r.{col(RulesRevision, 'id')} = 1) "
        f"FROM {tables['k']} k "
        f"JOIN {tables['u']} u ON u.{col(User, 'id')} = k.{col(ApiKey, 'user')} "
        f"LEFT JOIN {tables['p']} p ON p.{col(Plan, 'user')} = u.{col(User, 'id')} "
        f"WHERE k.{col(ApiKey, 'lookup')} = %s AND k.{col(ApiKey, 'revoked_at')} IS NULL AND u.{col(User, 'is_active')}"
    )
    return sql, [layout for _, layout in parts]


def _instance(layout, values):
    model, attnames, converters = layout
    converted = []
    for value, (field_converters, column) in zip(values, converters):
        for converter in field_converters:
            value = converter(value, column, connection)
        converted.append(value)
    return model.from_db(connection.alias, attnames, converted)


def active_key(lookup: str) -> tuple[ApiKey | None, int]:
    """The active key of an active user with this lookup, its .user and .user.plan loaded as
    select_related would (or None); and the committed rules revision (0 before the first edit)."""
    compiled = _compiled.get(connection.vendor)
    if compiled is None:
        compiled = _compiled[connection.vendor] = _compile()
    sql, layouts = compiled
    with connection.cursor() as cursor:
        cursor.execute(sql, [lookup])
        row = cursor.fetchone()
    if row is None:
        return None, 0
    key_layout, user_layout, plan_layout = layouts
    end_key, end_user = len(key_layout[1]), len(key_layout[1]) + len(user_layout[1])
    key, user = _instance(key_layout, row[:end_key]), _instance(user_layout, row[end_key:end_user])
    plan_values = row[end_user:-1]
    if plan_values[0] is not None:  # its primary key: the LEFT JOIN found a plan
        user.plan = _instance(plan_layout, plan_values)
    else:  # cached as absent, as select_related does: user.plan raises DoesNotExist without a query
        type(user).plan.related.set_cached_value(user, None)
    key.user = user
    return key, row[-1] or 0
