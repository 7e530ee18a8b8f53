"""Model instances from hand-written SQL, for the few statements on the hot path of every run.

Django's ORM rebuilds and recompiles a query on every call: ~0.5-2 ms of CPU per statement on the
benchmark machine, several times what PostgreSQL spends on it (issue 6). Here a statement is written
once per process: a read by key (get), an INSERT (insert, insert_sql), an UPDATE by equality (update,
update_returning, update_sql), or hand-written SQL that selects a model's columns() and turns them
into an instance with load().
Values are written as the ORM writes them (get_db_prep_save) and read as it reads them
(Model.from_db, with every field's database converters: SQLite returns datetimes as text, for one).
The columns come from the model's metadata, so a new field is read and written without a change here."""

import functools

from django.db import connection


class ModelRows:
    def __init__(self, model, alias: str | None = None):
        self.model, self.alias = model, alias
        self.fields = model._meta.concrete_fields
        self.attnames = [field.attname for field in self.fields]
        self._converters = {}  # vendor -> [(converters, column expression) per field]
        self._sql = {}  # (vendor, statement, ...) -> compiled statement

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
        for value, (field_converters, column) in zip(values, converters):
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
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return None if row is None else self.load(row)

    def insert(self, instance) -> None:
        """INSERT a new instance, every field written as Model.save() writes it (defaults and
        auto_now_add included), and the database-generated primary key set on it. For models with
        no save() of their own and no signals: neither runs."""
        sql, written, returned = self._insert_compiled(None)
        params = self._insert_params(instance, written)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if returned:
                for field, value in zip(returned, cursor.fetchone()):
                    setattr(instance, field.attname, value)
        instance._state.adding, instance._state.db = False, connection.alias

    def insert_sql(self, instance, source: str | None = None) -> tuple[str, list]:
        """The statement and parameters of that INSERT; with `source` (SQL naming a table), an
        INSERT ... SELECT of the same values FROM it, which writes the row once per row of `source`
        (billing.services.quota_reserve_inserting). The caller marks the instance saved."""
        sql, written, _ = self._insert_compiled(source)
        return sql, self._insert_params(instance, written)

    @staticmethod
    def _insert_params(instance, written) -> list:
        return [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in written]

    def _insert_compiled(self, source):
        key = (connection.vendor, "insert", source)
        compiled = self._sql.get(key)
        if compiled is None:
            written = [field for field in self.fields if not field.db_returning]
            returned = [field for field in self.fields if field.db_returning]
            values = ", ".join(["%s"] * len(written))
            sql = f"INSERT INTO {table(self.model)} ({', '.join(connection.ops.quote_name(f.column) for f in written)}) "
            sql += f"SELECT {values} FROM {source}" if source else f"VALUES ({values})"
            if returned:
                sql += f" RETURNING {', '.join(connection.ops.quote_name(f.column) for f in returned)}"
            compiled = self._sql[key] = (sql, written, returned)
        return compiled

    def update(self, where: dict, *, add: dict | None = None, **values) -> int:
        """UPDATE the rows whose fields equal `where` (None: IS NULL), setting `values` as
        QuerySet.update() would write them and adding `add`'s amounts in the database (as F() + n
        would); the number of rows changed."""
        with connection.cursor() as cursor:
            cursor.execute(*self.update_sql(where, add=add, **values))
            return cursor.rowcount

    def update_returning(self, where: dict, *, add: dict | None = None, **values):
        """The same UPDATE for a key that matches one row at most: the row as updated, or None."""
        with connection.cursor() as cursor:
            cursor.execute(*self.update_sql(where, add=add, returning=self.columns(), **values))
            row = cursor.fetchone()
        return None if row is None else self.load(row)

    def update_sql(
        self, where: dict, *, add: dict | None = None, returning: str = "", **values
    ) -> tuple[str, list]:
        """The statement and parameters of that UPDATE, RETURNING `returning` (SQL) if given, for a
        caller that builds on it (billing.services.settlement_write)."""
        add = add or {}
        null = tuple(name for name, value in where.items() if value is None)
        key = (connection.vendor, "update", tuple(values), tuple(add), tuple(where), null, returning)
        sql = self._sql.get(key)
        if sql is None:
            quote = lambda name: connection.ops.quote_name(self.model._meta.get_field(name).column)  # noqa: E731
            assign = [f"{quote(name)} = %s" for name in values] + [
                f"{quote(name)} = {quote(name)} + %s" for name in add
            ]
            conditions = " AND ".join(
                f"{quote(name)} {'IS NULL' if name in null else '= %s'}" for name in where
            )
            sql = f"UPDATE {table(self.model)} SET {', '.join(assign)} WHERE {conditions}"
            if returning:
                sql += f" RETURNING {returning}"
            self._sql[key] = sql
        field = self.model._meta.get_field
        params = [field(name).get_db_prep_save(value, connection) for name, value in values.items()]
        params += list(add.values())
        params += [
            field(name).get_db_prep_value(value, connection)
            for name, value in where.items()
            if value is not None
        ]
        return sql, params

    def _field_converters(self, field):
        column = field.get_col(self.alias or self.model._meta.db_table)
        return connection.ops.get_db_converters(column) + column.get_db_converters(connection), column


def column(model, field_name: str) -> str:
    """A field's column name, quoted for the current database."""
    return connection.ops.quote_name(model._meta.get_field(field_name).column)


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


@functools.cache
def rows_of(model) -> ModelRows:
    """The process's ModelRows of `model` (unaliased), so each statement is compiled once."""
    return ModelRows(model)
