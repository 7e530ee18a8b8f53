"""The database machinery the hot paths share: model rows to and from hand-written SQL, and the
PostgreSQL backend."""

from django.db import connection


def release_connection() -> None:
    """Give this thread's database connection back while it waits on something else (a provider,
    a backoff): to the pool where there is one. Without a pool it is kept, since opening a new one
    costs more than keeping it."""
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()
