"""The schema as migrated on PostgreSQL: no index that another one already serves, and migrations
that say everything the models say."""

from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection

OUR_APPS = ("accounts", "agents", "audit", "billing", "routing", "runs")

# Every valid btree index on a table's columns (no expressions), by its key columns in order (not
# its INCLUDE columns), each with its sort options and collation, with whether it is unique or partial
# and whether its operator classes are all the default ones (a varchar_pattern_ops index serves LIKE,
# which a default one does not).
_INDEXES = """
SELECT i.indexrelid::regclass::text,
       (SELECT array_agg(format('%%s %%s %%s', a.attname, i.indoption[k.n - 1], i.indcollation[k.n - 1])
                         ORDER BY k.n)
          FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE k.n <= i.indnkeyatts),
       i.indisunique,
       i.indpred IS NOT NULL,
       (SELECT bool_and(c.opcdefault) FROM unnest(i.indclass) AS k(oid) JOIN pg_opclass c ON c.oid = k.oid)
  FROM pg_index i
  JOIN pg_class x ON x.oid = i.indexrelid
  JOIN pg_am am ON am.oid = x.relam
 WHERE i.indrelid = %s::regclass AND i.indisvalid AND am.amname = 'btree' AND i.indexprs IS NULL
"""


def indexes_of(table):
    with connection.cursor() as cursor:
        cursor.execute(_INDEXES, [table])
        return cursor.fetchall()


def redundant_indexes(table):
    """Indexes whose key columns (with their order and collation) lead another index of the table:
    that one answers every lookup they answer, so they only cost writes. Unique and partial indexes
    are never redundant (they constrain, or cover other rows); an index with other operator classes
    only covers its own kind."""
    indexes = indexes_of(table)
    found = []
    for name, columns, unique, partial, default_ops in indexes:
        if unique or partial or not default_ops:
            continue
        for other, other_columns, _, other_partial, other_default_ops in indexes:
            if (
                other != name
                and not other_partial
                and other_default_ops
                and other_columns[: len(columns)] == columns
            ):
                found.append(
                    f"{name} ({', '.join(c.split()[0] for c in columns)}) is served by "
                    f"{other} ({', '.join(c.split()[0] for c in other_columns)})"
                )
    return found


def our_models():
    return [model for app in OUR_APPS for model in apps.get_app_config(app).get_models()]


@pytest.mark.django_db
def test_no_index_is_served_by_another():
    assert connection.vendor == "postgresql"
    tables = [model._meta.db_table for model in our_models()]
    assert "agents_run" in tables and "billing_ledgerentry" in tables
    assert [problem for table in tables for problem in redundant_indexes(table)] == []


@pytest.mark.django_db
def test_the_check_finds_a_redundant_index_and_only_that():
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX run_user_only ON agents_run (user_id)")
        cursor.execute(
            "CREATE INDEX run_user_desc ON agents_run (user_id DESC)"
        )  # not served: the other order
        cursor.execute("CREATE INDEX run_period_incl ON billing_ledgerentry (period) INCLUDE (model)")
        cursor.execute("CREATE INDEX run_period_model ON billing_ledgerentry (period, model)")
    assert redundant_indexes("agents_run") == [
        "run_user_only (user_id) is served by agents_run_user_id_4d9103_idx (user_id, created_at)"
    ]
    assert redundant_indexes("billing_ledgerentry") == [
        "run_period_incl (period) is served by run_period_model (period, model)"
    ]


@pytest.mark.django_db
def test_every_foreign_key_without_its_own_index_leads_another():
    # A foreign key's lookups (its related objects, and the cascades and checks when the row it points
    # to is deleted) need an index that starts with its column.
    unindexed = [
        (model, field)
        for model in our_models()
        for field in model._meta.local_fields
        if field.is_relation and field.many_to_one and not field.db_index
    ]
    assert {(model._meta.db_table, field.column) for model, field in unindexed} >= {
        ("agents_run", "user_id"),
        ("billing_ledgerentry", "user_id"),
    }
    for model, field in unindexed:
        leading = {
            columns[0].split()[0]
            for _, columns, _, partial, _ in indexes_of(model._meta.db_table)
            if not partial
        }
        assert field.column in leading, (
            f"{model._meta.db_table}.{field.column} has no index that starts with it"
        )


@pytest.mark.django_db
def test_the_migrations_say_everything_the_models_say():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
