"""Model instances from hand-written SQL, for the few statements on the hot path of every run.

Django's ORM rebuilds and recompiles a query on every call: ~0.5-2 ms of CPU per statement on the
benchmark machine, several times what PostgreSQL spends on it (issue 6). A statement written once per
process selects a model's columns with ModelRows.columns(), and ModelRows.load() turns them into an
instance through Model.from_db, with every field's database converters applied as the ORM applies
them (SQLite returns datetimes as text, for one). The columns come from the model's metadata, so a
new field is read without a change here."""
from django.db import connection


class ModelRows:
    def __init__(self, model, alias: str | None = None):
        self.model, self.alias = model, alias
        self.fields = model._meta.concrete_fields
        self.attnames = [field.attname for field in self.fields]
        self._converters = {}  # vendor -> [(converters, column expression) per field]

    def __len__(self):
        return len(self.fields)

    def columns(self) -> str:
        prefix = f"{self.alias}." if self.alias else ""
        return ", ".join(prefix + connection.ops.quote_name(field.column) for field in self.fields)

    def load(self, values):
        converters = self._converters.get(connection.vendor)
        if converters is None:
            converters = self._converters[connection.vendor] = [self._field_converters(field) for field in self.fields]
        converted = []
        for value, (field_converters, column) in zip(values, converters):
            for converter in field_converters:
                value = converter(value, column, connection)
            converted.append(value)
        return self.model.from_db(connection.alias, self.attnames, converted)

    def _field_converters(self, field):
        column = field.get_col(self.alias or self.model._meta.db_table)
        return connection.ops.get_db_converters(column) + column.get_db_converters(connection), column


def column(model, field_name: str) -> str:
    """A field's column name, quoted for the current database."""
    return connection.ops.quote_name(model._meta.get_field(field_name).column)


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)
