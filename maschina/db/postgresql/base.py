"""Django's PostgreSQL backend, with a connection check that costs no round trip when there is
nothing to doubt.

With CONN_HEALTH_CHECKS, Django checks a kept connection before the first query of every request
and every task (runs.apps) with a `SELECT 1`: a round trip, and a statement for PostgreSQL to
run, on every call. An idle connection in good order has nothing waiting on its socket;
when PostgreSQL restarts or ends the session it sends its error and closes the socket, which then
reads as ready. So a connection that psycopg already knows is broken, or that is inside a failed
transaction, is unusable; one whose socket has something to read gets Django's `SELECT 1`; and one
that was found usable less than QUIET_SECS ago is usable without asking the server.

A peer that vanished without closing the socket (a failover to another host, a NAT that forgot the
connection) leaves it quiet: after QUIET_SECS without a check the `SELECT 1` is asked again, so only a
connection in steady use skips it, and its next statement fails as it would have failed anyway."""

import select
import time

import psycopg
from django.db.backends.postgresql import base
from psycopg import _queries, pq

QUIET_SECS = 10.0

# psycopg converts a statement's %(name)s placeholders once and keeps the result, but only for a
# statement of at most 4096 characters and 50 parameters; the admission's one statement is larger,
# and converting it again on every request cost about a millisecond of the web tier's CPU. Our
# statements are a fixed few, so the cache may hold them (tests/test_statements.py checks it does).
_queries.MAX_CACHED_STATEMENT_LENGTH = max(_queries.MAX_CACHED_STATEMENT_LENGTH, 16384)
_queries.MAX_CACHED_STATEMENT_PARAMS = max(_queries.MAX_CACHED_STATEMENT_PARAMS, 128)
_USABLE_STATES = (pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS)


class DatabaseWrapper(base.DatabaseWrapper):
    _usable_at = None  # time.monotonic() when the connection last passed a check

    def is_usable(self):
        connection = self.connection
        if connection is None or connection.pgconn.status != pq.ConnStatus.OK:
            return False
        if connection.info.transaction_status not in _USABLE_STATES:
            return False
        now = time.monotonic()
        if self._usable_at is None or now - self._usable_at > QUIET_SECS or self._socket_has_data(connection):
            usable = super().is_usable()
        else:
            usable = True
        self._usable_at = now if usable else None
        return usable

    def connect(self):
        super().connect()
        self._usable_at = time.monotonic()  # a new connection has just answered

    @staticmethod
    def _socket_has_data(connection) -> bool:
        """Whether anything (an error, the end of the stream) waits to be read; True if that cannot
        be told, so the caller asks the server."""
        try:
            poller = select.poll()  # not select.select: it refuses descriptors above 1023
            poller.register(connection.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError, psycopg.Error):
            return True
