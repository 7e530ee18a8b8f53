"""maschina.db.postgresql: the health check of a kept connection asks the server nothing when its socket
is quiet, and still finds a connection that PostgreSQL has ended or that is stuck in a failed
transaction."""

import time

import psycopg
import pytest
from django.db import connection, connections

from maschina.db.postgresql.base import QUIET_SECS


@pytest.fixture
def kept():
    """A second connection to the test database, as a worker or web process keeps one."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def backend_pid(wrapper):
    return wrapper.connection.info.backend_pid


def last_statement(pid):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_stat_clear_snapshot()"
        )  # the test's transaction would keep the first reading
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_quiet_connection_is_usable_without_a_statement(kept):
    assert kept.vendor == "postgresql" and kept.__module__ == "maschina.db.postgresql.base"
    kept.connection.execute("SELECT 'the last statement'")
    assert kept.is_usable()
    assert last_statement(backend_pid(kept)) == "SELECT 'the last statement'"
    # Django's own check would have run a statement.
    assert super(type(kept), kept).is_usable()
    assert last_statement(backend_pid(kept)) == "SELECT 1"


@pytest.mark.django_db
def test_a_connection_not_checked_for_a_while_is_asked(kept):
    """A peer that vanished without closing the socket leaves it quiet: only a connection found usable
    within QUIET_SECS skips the statement."""
    kept.connection.execute("SELECT 'the last statement'")
    kept._usable_at = time.monotonic() - QUIET_SECS - 1
    assert kept.is_usable()
    assert last_statement(backend_pid(kept)) == "SELECT 1"
    kept.connection.execute("SELECT 'the next statement'")
    assert kept.is_usable()  # just checked: no statement
    assert last_statement(backend_pid(kept)) == "SELECT 'the next statement'"


@pytest.mark.django_db
def test_a_connection_the_server_ended_is_unusable_and_replaced(kept):
    pid = backend_pid(kept)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the backend's FATAL and close reach the socket
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone()[0] == 0:
                break
        time.sleep(0.05)
    assert not kept.is_usable()
    kept.health_check_enabled, kept.health_check_done = True, False
    kept.close_if_health_check_failed()
    assert kept.connection is None  # closed: the next query opens a new one
    with kept.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid


@pytest.mark.django_db
def test_a_connection_in_a_failed_transaction_is_unusable(kept):
    raw = kept.connection
    raw.execute("BEGIN")
    with pytest.raises(psycopg.errors.DivisionByZero):
        raw.execute("SELECT 1 / 0")
    assert not kept.is_usable()
    raw.execute("ROLLBACK")
    assert kept.is_usable()
