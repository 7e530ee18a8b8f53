"""Migration operations the project's migrations share."""

from django.db import migrations


def drop_index(table: str, column: str, name: str) -> migrations.RunPython:
    """Drop a one-column index by name, and make it again when migrating back. On PostgreSQL,
    CONCURRENTLY: runs and ledger rows keep being written meanwhile (a plain DROP INDEX waits for
    every transaction on the table and blocks all of its reads and writes while it waits). That
    cannot run in a transaction: a migration using this sets `atomic = False`."""

    def concurrently(schema_editor):
        return " CONCURRENTLY" if schema_editor.connection.vendor == "postgresql" else ""

    def forward(apps, schema_editor):
        schema_editor.execute(f'DROP INDEX{concurrently(schema_editor)} "{name}"')

    def backward(apps, schema_editor):
        schema_editor.execute(f'CREATE INDEX{concurrently(schema_editor)} "{name}" ON "{table}" ("{column}")')

    return migrations.RunPython(forward, backward)
