"""Django's PostgreSQL backend, with a connection check that costs no round trip when there is
nothing to doubt.

With CONN_HEALTH_CHECKS, Django checks a kept connection before the first query of every request
and every task (runtime.apps) with a `SELECT 1`: a round trip, and a statement for PostgreSQL to
run, on every call (issue 6). An idle connection in good order has nothing waiting on its socket;
when PostgreSQL restarts or ends the session it sends its error and closes the socket, which then
reads as ready. So: a connection that psycopg already knows is broken, or that is inside a failed
transaction, is unusable; one whose socket has something to read gets Django's `SELECT 1`; any
other is usable without asking the server."""
import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self):
        connection = self.connection
        if connection is None or connection.closed or connection.pgconn.status != pq.ConnStatus.OK:
            return False
        if connection.info.transaction_status not in (pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS):
            return False
        try:
            waiting, _, _ = select.select([connection.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return super().is_usable() if waiting else True
