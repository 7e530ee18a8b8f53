"""The web tier's side of a run's events (CONTRACT section 9): the event stream of GET
/runs/{id}/events and the wait of `?wait=N`, both coroutines, so a held request costs a task and a
few kilobytes, not a thread.

One Hub per event loop (a web process under ASGI) watches the runs its clients follow: with Redis,
one pub/sub connection subscribed to the channel of each watched run, on which runs.events publishes
every append, events included, and the hub hands them to the run's clients; without, one query
every RUN_EVENTS_POLL_SECS for the runs that have new events. A client reads its run's log itself
when it starts, and whenever what it was handed does not follow on from what it has sent. A client
that goes away stops watching at once (its task is cancelled, and the last watcher of a run
unsubscribes)."""

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from maschina.db.in_thread import in_thread

from . import events
from .models import TERMINAL_STATUSES, Run, RunEvent

TERMINAL = frozenset(TERMINAL_STATUSES)
BATCH = 500  # events read from the log at a time
DONE_GRACE_SECS = 5.0  # how long a terminal run's `done` may lag before the stream says it itself
TERMINAL_CHECK_SECS = 5.0  # a waiting request checks its run's row this often whatever it hears


class Watcher:
    """One client's watch of a run: woken when the run has new events, with the events themselves
    when the hub was handed them."""

    __slots__ = ("wake", "handed")

    def __init__(self):
        self.wake = asyncio.Event()
        self.handed: list[tuple[int, str, str]] = []


class Hub:
    """The runs the clients of this event loop follow, and what wakes them."""

    def __init__(self):
        self.watchers: dict[str, set[Watcher]] = {}
        self.lock = asyncio.Lock()
        self.asked: dict[str, asyncio.Future[bool]] = {}
        self.checker: asyncio.Task | None = None

    async def ended(self, run_id) -> bool:
        """Whether the run's row says it is terminal. Clients that ask while a check is under way
        are answered together by the next one, so a thousand streams whose keep-alives fall due at
        once cost a query or two, not a thousand."""
        key = str(run_id)
        answer = self.asked.get(key)
        if answer is None:
            answer = self.asked[key] = asyncio.get_running_loop().create_future()
            if self.checker is None:
                self.checker = asyncio.create_task(self._check())
        return await asyncio.shield(answer)

    async def _check(self) -> None:
        try:
            while self.asked:
                asked, self.asked = self.asked, {}
                try:
                    ended = await in_thread(_ended_among, list(asked))
                except Exception as exc:
                    for answer in asked.values():
                        answer.set_exception(exc)
                        answer.exception()  # a client that left meanwhile must not leave it unread
                    continue
                for key, answer in asked.items():
                    answer.set_result(key in ended)
        finally:
            self.checker = None

    async def watch(self, run_id) -> Watcher:
        watcher = Watcher()
        async with self.lock:
            peers = self.watchers.setdefault(str(run_id), set())
            peers.add(watcher)
            if len(peers) == 1:
                await self._started(str(run_id))
        return watcher

    async def unwatch(self, run_id, watcher: Watcher) -> None:
        async with self.lock:
            peers = self.watchers.get(str(run_id))
            if peers is None:
                return
            peers.discard(watcher)
            if not peers:
                del self.watchers[str(run_id)]
                await self._stopped(str(run_id))

    def _wake(self, run_id: str, handed: Sequence[tuple[int, str, str]] = ()) -> None:
        for watcher in self.watchers.get(run_id, ()):
            watcher.handed.extend(handed)
            watcher.wake.set()

    async def next_events(self, run_id, watcher: Watcher, after: int) -> list[tuple[int, str, str]]:
        """The run's events after id `after`: those the watcher was handed when they follow on from
        it without a gap, else read from the log (a message lost, or one that carried none)."""
        watcher.wake.clear()
        handed, watcher.handed = watcher.handed, []
        fresh = [event for event in handed if event[0] > after]
        if fresh and all(event[0] == after + i for i, event in enumerate(fresh, 1)):
            return fresh
        return await self.read(run_id, after)

    async def _started(self, run_id: str) -> None:
        raise NotImplementedError

    async def _stopped(self, run_id: str) -> None:
        raise NotImplementedError

    async def read(self, run_id, after: int) -> list[tuple[int, str, str]]:
        """The run's events after id `after`, in order: (id, name, JSON data)."""
        raise NotImplementedError


class RedisHub(Hub):
    def __init__(self, url: str):
        super().__init__()
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=events.REDIS_CONNECTIONS,
            timeout=events.REDIS_WAIT_SECS,
            socket_connect_timeout=2,
        )
        self.client = redis.asyncio.Redis.from_pool(pool)  # closing the client closes its pool
        self.pubsub: Any = None
        self.listener: asyncio.Task | None = None

    async def _started(self, run_id: str) -> None:
        if self.pubsub is None:
            self.pubsub = self.client.pubsub()
        await self.pubsub.subscribe(**{events.channel(run_id): self._on_message})
        if self.listener is None:
            self.listener = asyncio.create_task(self.pubsub.run(poll_timeout=5.0))

    async def _on_message(self, message) -> None:
        name = message["channel"].decode()
        self._wake(name.removeprefix("maschina:run:"), events.pushed(message["data"]))

    async def _stopped(self, run_id: str) -> None:
        assert self.pubsub is not None
        if self.watchers:
            await self.pubsub.unsubscribe(events.channel(run_id))
            return
        # The last one: close the connection (under WSGI the loop ends with the request).
        pubsub, listener, self.pubsub, self.listener = self.pubsub, self.listener, None, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        await pubsub.aclose()

    async def read(self, run_id, after: int) -> list[tuple[int, str, str]]:
        entries: Any = await self.client.xrange(
            events.stream_key(run_id), min=f"(0-{after}", max="+", count=BATCH
        )
        return [
            (int(entry_id.split(b"-")[1]), fields[b"e"].decode(), fields[b"d"].decode())
            for entry_id, fields in entries
        ]


class TableHub(Hub):
    def __init__(self):
        super().__init__()
        self.poller: asyncio.Task | None = None

    async def _started(self, run_id: str) -> None:
        if self.poller is None or self.poller.done():
            cursor = await in_thread(_last_event_pk)
            self.poller = asyncio.create_task(self._poll(cursor))

    async def _stopped(self, run_id: str) -> None:
        if not self.watchers and self.poller is not None:
            self.poller.cancel()
            self.poller = None

    async def _poll(self, cursor: int) -> None:
        while True:
            await asyncio.sleep(settings.RUN_EVENTS_POLL_SECS)
            for run_id, top in await in_thread(_runs_with_events_after, cursor):
                cursor = max(cursor, top)
                self._wake(str(run_id))

    async def read(self, run_id, after: int) -> list[tuple[int, str, str]]:
        return await in_thread(_events_after, run_id, after)


def _last_event_pk() -> int:
    return RunEvent.objects.aggregate(top=Max("id"))["top"] or 0


def _runs_with_events_after(cursor: int) -> list[tuple]:
    rows = RunEvent.objects.filter(id__gt=cursor).values("run_id").annotate(top=Max("id"))
    return [(row["run_id"], row["top"]) for row in rows]


def _ended_among(run_ids: list[str]) -> set[str]:
    ended: set[str] = set()
    for start in range(0, len(run_ids), BATCH):
        rows = Run.objects.filter(pk__in=run_ids[start : start + BATCH], status__in=TERMINAL)
        ended.update(str(pk) for pk in rows.values_list("pk", flat=True))
    return ended


def _events_after(run_id, after: int) -> list[tuple[int, str, str]]:
    rows = RunEvent.objects.filter(run_id=run_id, seq__gt=after).order_by("seq")
    return list(rows.values_list("seq", "event", "data")[:BATCH])


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()


def hub() -> Hub:
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        url = settings.RUN_EVENTS_REDIS_URL
        found = _hubs[loop] = RedisHub(url) if url else TableHub()
    return found


async def close_hub() -> None:
    """Close this loop's hub: a WSGI request's loop ends with the request (under ASGI the hub stays)."""
    found = _hubs.pop(asyncio.get_running_loop(), None)
    if isinstance(found, RedisHub):
        await found.client.aclose()


def _reload(run_id) -> Run:
    return Run.objects.get(pk=run_id)


def _expired(run: Run) -> bool:
    """Past retention: the run's log may be gone, and is not served any more."""
    retention = settings.RUN_EVENTS_RETENTION_SECS
    return (
        run.is_terminal
        and run.finished_at is not None
        and (timezone.now() - run.finished_at).total_seconds() > retention
    )


def sse(event_id: int, name: str, data: str) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n".encode()


KEEP_ALIVE = b": keep-alive\n\n"


async def _terminal(run_id, after: int) -> AsyncIterator[bytes]:
    """A terminal run's last events as its row says them, for a log that is gone or lacks them."""
    run = await in_thread(_reload, run_id)
    data = await in_thread(lambda: events.dumps(events.run_data(run)))
    if after < 1:
        yield sse(1, events.STATUS, data)
    yield sse(max(after, 1) + 1, events.DONE, data)


async def event_stream(run: Run, after: int) -> AsyncIterator[bytes]:
    """The run's events after id `after`, then as they happen, to its `done`."""
    if _expired(run):
        if after < 2:
            async for chunk in _terminal(run.pk, after):
                yield chunk
        return
    watching = hub()
    if after > 0 and run.is_terminal:  # resuming after the `done` event: nothing more to say
        seen = await watching.read(run.pk, after - 1)
        if seen and seen[0][0] == after and seen[0][1] == events.DONE:
            return
    watcher = await watching.watch(run.pk)
    try:
        keepalive = settings.RUN_EVENTS_KEEPALIVE_SECS
        terminal_since = time.monotonic() if run.is_terminal else None
        items = await watching.read(run.pk, after)  # what came before the watch began
        while True:
            for event_id, name, data in items:
                yield sse(event_id, name, data)
                after = event_id
                if name == events.DONE:
                    return
            if len(items) == BATCH:
                items = await watching.read(run.pk, after)
                continue
            timeout = keepalive
            if terminal_since is not None:
                lag = time.monotonic() - terminal_since
                if lag >= DONE_GRACE_SECS:  # its writer could not write its end: say it from the row
                    async for chunk in _terminal(run.pk, after):
                        yield chunk
                    return
                timeout = min(timeout, DONE_GRACE_SECS - lag)
            items = []
            try:
                await asyncio.wait_for(watcher.wake.wait(), timeout)
            except TimeoutError:
                if terminal_since is None:
                    yield KEEP_ALIVE
                    if await watching.ended(run.pk):
                        terminal_since = time.monotonic()
            else:
                items = await watching.next_events(run.pk, watcher, after)
    finally:
        await watching.unwatch(run.pk, watcher)


async def wait_terminal(run: Run, seconds: int) -> Run:
    """The run once it is terminal, or as it stands after `seconds`: woken by its `done` event (every
    end of a run writes one), and asking the hub whether its row ended every TERMINAL_CHECK_SECS in
    case one is lost."""
    if seconds <= 0 or run.is_terminal:
        return run
    deadline = time.monotonic() + seconds
    watching = hub()
    watcher = await watching.watch(run.pk)
    try:
        run = await in_thread(_reload, run.pk)  # watching now: no end can be missed after this read
        after = 0
        while not run.is_terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await in_thread(_reload, run.pk)  # as it stands now
            try:
                await asyncio.wait_for(watcher.wake.wait(), min(remaining, TERMINAL_CHECK_SECS))
            except TimeoutError:
                if await watching.ended(run.pk):
                    run = await in_thread(_reload, run.pk)
                continue
            items = await watching.next_events(run.pk, watcher, after)
            if items:
                after = items[-1][0]
            if any(name == events.DONE for _, name, _ in items):
                run = await in_thread(_reload, run.pk)
        return run
    finally:
        await watching.unwatch(run.pk, watcher)
