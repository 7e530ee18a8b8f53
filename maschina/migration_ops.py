"""Migration operations the project's migrations share."""
from django.db import migrations


def drop_index(table: str, column: str, name: str) -> migrations.RunSQL:
    """Drop a one-column index by name (reversibly), on PostgreSQL and SQLite alike."""
    return migrations.RunSQL(sql=f'DROP INDEX IF EXISTS "{name}"', reverse_sql=f'CREATE INDEX "{name}" ON "{table}" ("{column}")')
