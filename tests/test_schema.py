"""The schema as migrated on PostgreSQL: no index that another one already serves, and migrations
that say everything the models say."""
from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection

OUR_APPS = ("accounts", "agents", "audit", "billing", "routing")

# Every plain btree index of a table, by its key columns in order, with whether it is unique or
# partial and whether its operator classes are all the default ones (a varchar_pattern_ops index
# serves LIKE, which a default one does not).
_INDEXES = """
SELECT i.indexrelid::regclass::text,
       (SELECT array_agg(a.attname ORDER BY k.n)
          FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum),
       i.indisunique,
       i.indpred IS NOT NULL,
       (SELECT bool_and(c.opcdefault) FROM unnest(i.indclass) AS k(oid) JOIN pg_opclass c ON c.oid = k.oid)
  FROM pg_index i
  JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_class x ON x.oid = i.indexrelid
  JOIN pg_am am ON am.oid = x.relam
 WHERE t.relname = %s AND am.amname = 'btree' AND i.indexprs IS NULL
"""


def redundant_indexes(table):
    """Indexes whose key columns lead another index of the table: that one answers every lookup
    they answer, so they only cost writes. Unique and partial indexes are never redundant (they
    constrain, or cover other rows); an index with other operator classes only covers its own kind."""
    with connection.cursor() as cursor:
        cursor.execute(_INDEXES, [table])
        indexes = cursor.fetchall()
    found = []
    for name, columns, unique, partial, default_ops in indexes:
        if unique or partial or not default_ops:
            continue
        for other, other_columns, _, other_partial, other_default_ops in indexes:
            if other != name and not other_partial and other_default_ops and other_columns[: len(columns)] == columns:
                found.append(f"{name} {columns} is served by {other} {other_columns}")
    return found


@pytest.mark.django_db
def test_no_index_is_served_by_another():
    assert connection.vendor == "postgresql"
    tables = [model._meta.db_table for app in OUR_APPS for model in apps.get_app_config(app).get_models()]
    assert "agents_run" in tables and "billing_ledgerentry" in tables
    assert [problem for table in tables for problem in redundant_indexes(table)] == []


@pytest.mark.django_db
def test_the_run_table_keeps_the_indexes_its_lookups_use():
    # The composites that serve the dropped foreign-key indexes are still there, and the check above
    # does find a redundant index when there is one.
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX run_user_only ON agents_run (user_id)")
    assert redundant_indexes("agents_run") == [
        "run_user_only ['user_id'] is served by agents_run_user_id_4d9103_idx ['user_id', 'created_at']"
    ]


@pytest.mark.django_db
def test_the_migrations_say_everything_the_models_say():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
