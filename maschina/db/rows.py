"""Model instances to and from hand-written SQL, for the few statements on the hot path of every run.

Django's ORM rebuilds and compiles a query on every call, which costs several times what PostgreSQL
spends running it (bench/README.md has the figures). Here a statement is built once per process: a
read by key (get), an INSERT ... SELECT (insert_sql), or an app's own statement that selects a
model's columns() and turns the row into an instance with load(). Values are written as the ORM
writes them (get_db_prep_save, or prepared()) and read as it reads them (Model.from_db, with every
field's database converters). The columns come from the model's metadata, so a new field is read
and written without a change here."""

import functools
from typing import Any

from django.db import connection


class ModelRows:
    def __init__(self, model, alias: str | None = None):
        self.model, self.alias = model, alias
        self.fields = model._meta.concrete_fields
        self.attnames = [field.attname for field in self.fields]
        self._converters: dict[str, list[tuple[list, Any]]] = {}  # vendor -> [(converters, column) per field]
        self._sql: dict[tuple, Any] = {}  # (vendor, statement, ...) -> compiled statement

    def __len__(self):
        return len(self.fields)

    def columns(self) -> str:
        key = (connection.vendor, "columns")
        columns = self._sql.get(key)
        if columns is None:
            prefix = f"{self.alias}." if self.alias else ""
            columns = self._sql[key] = ", ".join(
                prefix + connection.ops.quote_name(field.column) for field in self.fields
            )
        return columns

    def load(self, values):
        converters = self._converters.get(connection.vendor)
        if converters is None:
            converters = self._converters[connection.vendor] = [
                self._field_converters(field) for field in self.fields
            ]
        converted = []
        for value, (field_converters, column) in zip(values, converters, strict=True):
            for converter in field_converters:
                value = converter(value, column, connection)
            converted.append(value)
        return self.model.from_db(connection.alias, self.attnames, converted)

    def get(self, **equal):
        """The one row whose fields equal these values (primary or unique key), or None. Without
        `alias`, like Model.objects.filter(**equal).first() minus the ORDER BY, compiled once."""
        names = tuple(equal)
        key = (connection.vendor, "get", names)
        sql = self._sql.get(key)
        if sql is None:
            fields = [self.model._meta.get_field(name) for name in names]
            where = " AND ".join(f"{connection.ops.quote_name(field.column)} = %s" for field in fields)
            sql = self._sql[key] = f"SELECT {self.columns()} FROM {table(self.model)} WHERE {where}"
        params = [
            self.model._meta.get_field(name).get_db_prep_value(value, connection)
            for name, value in equal.items()
        ]
        row = fetch_one(sql, params)
        return None if row is None else self.load(row)

    def insert_sql(self, instance, source: str) -> tuple[str, dict]:
        """An INSERT ... SELECT of a new instance FROM `source` (SQL naming a relation), which writes
        the row once per row of `source`: the run's INSERT that selects from its reservation
        (billing.statements.quota_reserve_inserting). Every field is written as Model.save() writes
        it (defaults and auto_now_add included), but save() and its signals do not run: only for
        models that have neither (tests/test_statements.py holds them to that). The placeholders are
        named `<model>_<column>`, so the statement can share its parameters with the one it joins.
        The caller marks the instance saved."""
        key = (connection.vendor, "insert", source)
        compiled = self._sql.get(key)
        if compiled is None:
            written = [field for field in self.fields if not field.db_returning]
            prefix = self.model._meta.model_name
            columns = ", ".join(connection.ops.quote_name(field.column) for field in written)
            values = ", ".join(f"%({prefix}_{field.attname})s" for field in written)
            sql = f"INSERT INTO {table(self.model)} ({columns}) SELECT {values} FROM {source}"
            compiled = self._sql[key] = (sql, written, prefix)
        sql, written, prefix = compiled
        params = {
            f"{prefix}_{field.attname}": field.get_db_prep_save(field.pre_save(instance, True), connection)
            for field in written
        }
        return sql, params

    def _field_converters(self, field):
        column = field.get_col(self.alias or self.model._meta.db_table)
        return connection.ops.get_db_converters(column) + column.get_db_converters(connection), column


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def prepared(model_class, /, **values) -> dict:
    """Statement parameters for `model`'s fields, each written as QuerySet.update() writes it."""
    field = model_class._meta.get_field
    return {name: field(name).get_db_prep_save(value, connection) for name, value in values.items()}


def fetch_one(sql: str, params) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


@functools.cache
def rows_of(model) -> ModelRows:
    """The process's ModelRows of `model` (unaliased), so each statement is compiled once."""
    return ModelRows(model)
