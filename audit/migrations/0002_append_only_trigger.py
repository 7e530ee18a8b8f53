"""The database itself refuses to change or delete a change record, whichever client asks.
(TRUNCATE stays possible: it is how a test database is emptied, and it needs the table owner.)"""

from django.db import migrations

POSTGRES = [
    """
    CREATE FUNCTION audit_changerecord_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_changerecord is append-only';
    END;
    $$;
    """,
    """
    CREATE TRIGGER audit_changerecord_append_only BEFORE UPDATE OR DELETE ON audit_changerecord
    FOR EACH ROW EXECUTE FUNCTION audit_changerecord_append_only();
    """,
]
POSTGRES_REVERSE = [
    "DROP TRIGGER audit_changerecord_append_only ON audit_changerecord;",
    "DROP FUNCTION audit_changerecord_append_only();",
]
SQLITE = [
    f"""
    CREATE TRIGGER audit_changerecord_no_{op.lower()} BEFORE {op} ON audit_changerecord
    BEGIN SELECT RAISE(ABORT, 'audit_changerecord is append-only'); END;
    """
    for op in ("UPDATE", "DELETE")
]
SQLITE_REVERSE = [f"DROP TRIGGER audit_changerecord_no_{op};" for op in ("update", "delete")]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRES_REVERSE, "sqlite": SQLITE_REVERSE}),
        )
    ]
