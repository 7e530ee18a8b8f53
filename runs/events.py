"""A run's events (CONTRACT section 9): written by whoever changes the run (its worker, a cancel, the
sweeper), read by the web tier (runs.streams).

Each event is (id, name, JSON data), its id 1, 2, 3 ... within the run. With Redis they are a Redis
Stream per run whose entry ids are `0-<id>` (XADD with `0-*` numbers them, atomically, whoever
writes), kept RUN_EVENTS_RETENTION_SECS after the run ends (EXPIRE), and every append is published,
events included, on the run's pub/sub channel, which wakes the web processes that stream it.
Without Redis they are rows of runs.RunEvent, which the web tier polls, and which the sweeper
deletes once past retention.

A run's worker coalesces its deltas into one write per RUN_EVENTS_COALESCE_SECS (Writer), and
stops writing deltas when the run's log nears RUN_EVENTS_MAX: the rest of the text then goes out as
one delta at the end. An event that cannot be written (Redis down) is logged and dropped; it never
fails the run."""

import asyncio
import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from functools import cache

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from .models import Run, RunEvent

logger = logging.getLogger(__name__)

STATUS, DELTA, DONE = "status", "delta", "done"
# Redis connections of a process's log or hub. redis-py refuses a command when its pool is full, and
# a worker holds hundreds of runs, a web process a thousand streams: past this bound a command waits
# for a free connection (at most REDIS_WAIT_SECS) instead of being refused.
REDIS_CONNECTIONS = 32
REDIS_WAIT_SECS = 5


def stream_key(run_id) -> str:
    return f"maschina:run:{run_id}:events"


def channel(run_id) -> str:
    return f"maschina:run:{run_id}"


def dumps(data) -> str:
    return json.dumps(data, cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False)


def run_data(run: Run) -> dict:
    from .serializers import RunSerializer  # the API's run object, as GET /runs/{id} shows it

    return dict(RunSerializer(run).data)


# Appends a run's events to its stream, keeps the stream, and publishes the events themselves on the
# run's channel (`<id> <name> <data>` lines; data is JSON, which holds no raw newline), so a web
# process hands them to its clients without reading the stream back. A payload past
# PUSH_MAX_BYTES is published empty: a wake, after which the clients read the stream.
_APPEND = """
local lines, last = {}, nil
for i = 4, #ARGV, 2 do
  last = redis.call('XADD', KEYS[1], '0-*', 'e', ARGV[i], 'd', ARGV[i + 1])
  lines[#lines + 1] = string.sub(last, 3) .. ' ' .. ARGV[i] .. ' ' .. ARGV[i + 1]
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local payload = table.concat(lines, '\\n')
if #payload > tonumber(ARGV[2]) then payload = '' end
redis.call('PUBLISH', ARGV[3], payload)
return last
"""
PUSH_MAX_BYTES = 64 * 1024  # far below Redis's output buffer limit for a pub/sub client


def pushed(payload: bytes) -> list[tuple[int, str, str]]:
    """The events of a message published by RedisLog.append (none when it carried only a wake)."""
    found = []
    for line in payload.split(b"\n") if payload else ():
        event_id, name, data = line.split(b" ", 2)
        found.append((int(event_id), name.decode(), data.decode()))
    return found


class RedisLog:
    def __init__(self, url: str):
        import redis

        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_CONNECTIONS,
            timeout=REDIS_WAIT_SECS,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        self.client = redis.Redis.from_pool(pool)
        self.script = self.client.register_script(_APPEND)

    def append(self, run_id, items: list[tuple[str, str]], ttl: float) -> int:
        """Append the events (name, JSON), keep the log `ttl` seconds, announce them; the last id."""
        flat = [part for item in items for part in item]
        args: list[str | int] = [max(int(ttl), 1), PUSH_MAX_BYTES, channel(run_id), *flat]
        last: bytes = self.script(keys=[stream_key(run_id)], args=args)
        return int(last.split(b"-")[1])


class TableLog:
    def append(self, run_id, items: list[tuple[str, str]], ttl: float) -> int:
        """Numbered after the run's last event. On PostgreSQL writers of one run take turns (a
        transaction-scoped advisory lock on the run); SQLite runs one write at a time anyway, and
        the unique (run, seq) constraint catches any two that read the same last id."""
        for attempt in range(5):
            try:
                with transaction.atomic():
                    if connection.vendor == "postgresql":
                        with connection.cursor() as cursor:
                            cursor.execute(
                                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [str(run_id)]
                            )
                    last = RunEvent.objects.filter(run_id=run_id).aggregate(last=Max("seq"))["last"] or 0
                    now = timezone.now()
                    RunEvent.objects.bulk_create(
                        RunEvent(run_id=run_id, seq=last + i, event=name, data=data, created_at=now)
                        for i, (name, data) in enumerate(items, 1)
                    )
                return last + len(items)
            except IntegrityError:  # another writer took the same ids: read the last one again
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")


@cache
def log() -> RedisLog | TableLog:
    url = settings.RUN_EVENTS_REDIS_URL
    return RedisLog(url) if url else TableLog()


def _errors() -> tuple[type[BaseException], ...]:
    from django.db import DatabaseError

    from maschina.broker import RedisError

    return (RedisError, DatabaseError, OSError)


def append(run_id, items: list[tuple[str, str]], ttl: float) -> int | None:
    """Append events to the run's log; the last id, or None when it could not be written."""
    try:
        return log().append(run_id, items, ttl)
    except _errors() as exc:
        logger.warning("run %s: %d event(s) not written (%s)", run_id, len(items), exc.__class__.__name__)
        return None


def _running_ttl(run: Run) -> float:
    return run.timeout_secs + settings.TASK_HARD_MARGIN_SECS + settings.RUN_EVENTS_RETENTION_SECS


def publish_end(run_id) -> None:
    """The run's terminal `status` and `done`, from the row as it now stands (a cancel, the sweeper,
    a redelivery that finished the run)."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None or not run.is_terminal:
        return
    data = dumps(run_data(run))
    append(run.pk, [(STATUS, data), (DONE, data)], settings.RUN_EVENTS_RETENTION_SECS)


class Writer:
    """The events of one execution of a run. delta() may be called from any thread (the provider's);
    status() and end() from the run's own thread, which calls flush_due() when woken. With Redis a
    fragment that is due at once is written by the thread that brings it, which saves waking the
    run's thread for each, unless that thread runs the provider loop, which never waits on Redis;
    the database log is written only by the run's thread (a provider thread
    holds no connection). One write of the run's events at a time keeps them in order.

    The `executing` status goes out with the first fragment, or after one coalescing interval if no
    fragment came by then: one append fewer per run than writing it on its own."""

    def __init__(self, run: Run, wake: Callable[[], None]):
        self.run, self.wake = run, wake
        self.interval = settings.RUN_EVENTS_COALESCE_SECS
        self.inline = isinstance(log(), RedisLog)
        self.buffer: list[str] = []
        self.statuses: list[tuple[str, str]] = []  # status events not written yet
        self.status_due = math.inf
        self.last_flush = -math.inf  # the first fragment is due at once
        self.last_id = 0
        self.ended = False  # by end() or drop(): a late fragment of a closed call is not written
        self._lock = threading.Lock()  # the buffer
        self._writing = threading.Lock()  # one write of this run's events at a time

    def _take(self) -> list[tuple[str, str]]:
        """The waiting statuses, then the buffered text as a delta event; held under `_writing`."""
        with self._lock:
            text, self.buffer = "".join(self.buffer), []
            statuses, self.statuses, self.status_due = self.statuses, [], math.inf
        if not text:
            return statuses
        self.last_flush = time.monotonic()
        return [*statuses, (DELTA, dumps({"text": text}))]

    def _append(self, items, ttl: float) -> None:
        last = append(self.run.pk, items, ttl)
        if last is not None:
            self.last_id = last

    def status(self, run: Run) -> None:
        """The run's status as it stands, written with the next fragments or within one interval."""
        data = dumps(run_data(run))
        with self._lock:
            self.statuses.append((STATUS, data))
            self.status_due = min(self.status_due, time.monotonic() + self.interval)

    def delta(self, text: str) -> None:
        with self._lock:
            if self.ended:
                return
            first = not self.buffer
            self.buffer.append(text)
        if not first:
            return
        if self.inline and self.due_in() == 0 and not _on_event_loop():
            self.flush()
        else:
            self.wake()  # the run's thread works out when to write it

    def due_in(self) -> float | None:
        """Seconds until the waiting events are due to be written; None when there are none."""
        with self._lock:
            now = time.monotonic()
            due = max(0.0, self.status_due - now) if self.statuses else None
            if not self.buffer or self.last_id >= settings.RUN_EVENTS_MAX - 3:
                return due  # near the bound, the text waits for end()
            text_due = max(0.0, self.last_flush + self.interval - now)
            return text_due if due is None else min(due, text_due)

    def flush_due(self) -> None:
        due = self.due_in()
        if due is not None and due <= 0:
            self.flush()

    def flush(self) -> None:
        with self._writing:
            items = self._take()
            if items:
                self._append(items, _running_ttl(self.run))

    def drop(self) -> None:
        """Forget buffered deltas and any still to come (the run was canceled: its stream has ended)."""
        with self._lock:
            self.buffer, self.statuses, self.ended = [], [], True

    def end(self, run: Run) -> None:
        data = dumps(run_data(run))
        with self._writing:
            with self._lock:
                self.ended = True
            self._append([*self._take(), (STATUS, data), (DONE, data)], settings.RUN_EVENTS_RETENTION_SECS)


def _on_event_loop() -> bool:
    """Whether this thread runs an event loop (the provider calls'), which must never wait on Redis."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def purge_expired(now=None) -> int:
    """Delete the table's events of runs that ended more than RUN_EVENTS_RETENTION_SECS ago (the
    sweeper's; Redis expires its own). An event is never older than its run's end by more than the
    longest run, so older events are past retention whatever their run."""
    if settings.RUN_EVENTS_REDIS_URL:
        return 0
    now = now or timezone.now()
    retention = dt.timedelta(seconds=settings.RUN_EVENTS_RETENTION_SECS)
    ended = Run.objects.filter(finished_at__lt=now - retention).values("id")
    longest = dt.timedelta(seconds=settings.RUN_TIMEOUT_CAP_SECS + settings.TASK_HARD_MARGIN_SECS)
    old = RunEvent.objects.filter(created_at__lt=now - retention - longest)
    deleted = old.delete()[0]
    recent_ended = RunEvent.objects.filter(created_at__lt=now - retention, run_id__in=ended)
    return deleted + recent_ended.delete()[0]
