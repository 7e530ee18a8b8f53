"""A run's event log (runs.events) on the real stores: Redis Streams and the PostgreSQL table. Ids
are 1, 2, 3 ... per run whoever writes, a worker's deltas are coalesced and bounded, and the table
forgets runs past retention."""

import datetime as dt
import json
import time
import uuid

import pytest
import redis
from django.db import connection
from django.utils import timezone

from runs import events
from runs.models import RunEvent

from .concurrency import race
from .processes import redis_url_for

WRITERS, EACH = 12, 10


def ids_of_redis(client, run_id):
    return [int(entry_id.split(b"-")[1]) for entry_id, _ in client.xrange(events.stream_key(run_id))]


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_get_contiguous_ids_in_the_table():
    run_id = uuid.uuid4()
    log = events.TableLog()

    def write():
        try:
            return [log.append(run_id, [("delta", json.dumps({"text": "x"}))], 60) for _ in range(EACH)]
        finally:
            connection.close()

    results = race(WRITERS, write)
    assert not [r for r in results if isinstance(r, BaseException)], results
    returned = sorted(i for r in results for i in r)
    assert returned == list(range(1, WRITERS * EACH + 1))
    stored = list(RunEvent.objects.filter(run_id=run_id).order_by("seq").values_list("seq", flat=True))
    assert stored == returned


def test_concurrent_writers_get_contiguous_ids_in_redis():
    url = redis_url_for("e2e")
    client = redis.Redis.from_url(url)
    run_id = uuid.uuid4()
    log = events.RedisLog(url)
    results = race(
        WRITERS, lambda: [log.append(run_id, [("delta", "{}"), ("delta", "{}")], 60) for _ in range(EACH)]
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(i for r in results for i in r) == list(range(2, 2 * WRITERS * EACH + 1, 2))
    assert ids_of_redis(client, run_id) == list(range(1, 2 * WRITERS * EACH + 1))
    assert 0 < client.ttl(events.stream_key(run_id)) <= 60
    client.delete(events.stream_key(run_id))


class _Run:
    def __init__(self):
        self.pk = uuid.uuid4()
        self.timeout_secs = 60


@pytest.mark.django_db
def test_a_writer_coalesces_deltas_and_bounds_the_log(settings, monkeypatch):
    settings.RUN_EVENTS_REDIS_URL = None
    settings.RUN_EVENTS_MAX = 10
    settings.RUN_EVENTS_COALESCE_SECS = 3600  # nothing is due again once one write went out
    events.log.cache_clear()
    monkeypatch.setattr(events, "run_data", lambda run: {"id": str(run.pk)})
    run = _Run()
    wakes = []
    writer = events.Writer(run, wake=lambda: wakes.append(1))
    writer.status(run)
    for i in range(50):
        writer.delta(f"{i} ")
        writer.flush_due()
    # Woken when a fragment lands in an empty buffer (the first, and the first after that was written).
    assert len(wakes) == 2
    writer.end(run)
    rows = list(RunEvent.objects.filter(run_id=run.pk).order_by("seq").values_list("seq", "event", "data"))
    names = [name for _, name, _ in rows]
    assert names == ["status", "delta", "delta", "status", "done"]  # the first fragment, then the rest
    assert "".join(json.loads(data)["text"] for _, name, data in rows if name == "delta") == "".join(
        f"{i} " for i in range(50)
    )
    assert [seq for seq, _, _ in rows] == [1, 2, 3, 4, 5]
    writer.delta("late ")  # a closed call's last fragment, after the run's `done`
    writer.flush()
    assert RunEvent.objects.filter(run_id=run.pk).count() == 5

    settings.RUN_EVENTS_COALESCE_SECS = 0  # every fragment due at once: the bound holds instead
    bounded = _Run()
    writer = events.Writer(bounded, wake=lambda: None)
    writer.status(bounded)
    for i in range(50):
        writer.delta(f"{i} ")
        writer.flush_due()
    writer.end(bounded)
    rows = list(RunEvent.objects.filter(run_id=bounded.pk).order_by("seq").values_list("event", "data"))
    assert len(rows) <= settings.RUN_EVENTS_MAX
    assert [name for name, _ in rows][-2:] == ["status", "done"]
    assert "".join(json.loads(data)["text"] for name, data in rows if name == "delta") == "".join(
        f"{i} " for i in range(50)
    )
    events.log.cache_clear()


def test_the_executing_status_goes_out_with_the_first_fragment_or_after_one_interval(settings, monkeypatch):
    url = redis_url_for("e2e")
    settings.RUN_EVENTS_REDIS_URL = url
    settings.RUN_EVENTS_COALESCE_SECS = 0.2
    events.log.cache_clear()
    monkeypatch.setattr(events, "run_data", lambda run: {"id": str(run.pk)})
    client = redis.Redis.from_url(url)
    published = client.pubsub()
    try:
        answered, silent = _Run(), _Run()
        published.subscribe(events.channel(answered.pk))
        published.get_message(timeout=1)  # the subscription's confirmation
        writer = events.Writer(answered, wake=lambda: None)
        writer.status(answered)
        assert ids_of_redis(client, answered.pk) == []  # not on its own
        writer.delta("first ")  # from the provider's thread: due at once, written with the status
        assert ids_of_redis(client, answered.pk) == [1, 2]
        message = published.get_message(timeout=1)
        assert [name for _, name, _ in events.pushed(message["data"])] == ["status", "delta"]  # one append

        writer = events.Writer(silent, wake=lambda: None)
        writer.status(silent)
        writer.flush_due()
        assert ids_of_redis(client, silent.pk) == []
        assert 0 < writer.due_in() <= 0.2
        time.sleep(0.25)
        writer.flush_due()  # the run's thread, woken when it is due
        assert ids_of_redis(client, silent.pk) == [1]
    finally:
        published.close()
        client.delete(events.stream_key(answered.pk), events.stream_key(silent.pk))
        events.log.cache_clear()


@pytest.mark.django_db
def test_the_table_forgets_runs_past_retention(settings, start_run_row):
    settings.RUN_EVENTS_REDIS_URL = None
    settings.RUN_EVENTS_RETENTION_SECS = 60
    ended, running = start_run_row(), start_run_row()
    now = timezone.now()
    for run in (ended, running):
        RunEvent.objects.create(run_id=run.pk, seq=1, event="status", data="{}", created_at=now)
    ended.status, ended.finished_at = "failed", now - dt.timedelta(seconds=30)
    ended.save()
    assert events.purge_expired(now) == 0
    assert events.purge_expired(now + dt.timedelta(seconds=61)) == 1
    assert list(RunEvent.objects.values_list("run_id", flat=True)) == [running.pk]


@pytest.fixture
def start_run_row(make_user, make_agent, providers):
    from billing.selectors import plan_for
    from runs.admission import run_create

    def make():
        user = make_user("m10")
        return run_create(
            user=user,
            plan=plan_for(user),
            agent=make_agent(user),
            input={"message": "hello"},
            model="claude-haiku-4-5",
            timeout_secs=60,
            max_tokens=100,
        )

    return make


MANY = 300  # far more at once than a Redis client's default pool (100) holds


def connections_made(pool) -> int:
    """How many connections a redis-py pool has opened (it has no public count)."""
    if hasattr(pool, "_connections"):  # the blocking pool of the sync client
        return len(pool._connections)
    return len(pool._available_connections) + len(pool._in_use_connections)


def test_many_writers_at_once_share_a_bounded_pool_and_none_is_refused():
    """A worker holding hundreds of runs appends for many of them at once: each waits its turn for
    one of the log's connections rather than failing (an event refused would be lost)."""
    url = redis_url_for("e2e")
    client = redis.Redis.from_url(url)
    log = events.RedisLog(url)

    def write():
        run_id = uuid.uuid4()
        return run_id, [log.append(run_id, [("delta", "{}")], 60) for _ in range(3)]

    results = race(MANY, write)
    try:
        assert not [r for r in results if isinstance(r, BaseException)], results[:3]
        assert all(ids == [1, 2, 3] for _, ids in results)
        assert connections_made(log.client.connection_pool) <= events.REDIS_CONNECTIONS
    finally:
        client.delete(*(events.stream_key(r[0]) for r in results if not isinstance(r, BaseException)))


def test_a_web_process_reads_many_streams_at_once_through_a_bounded_pool():
    """A thousand clients woken together read their runs' logs at once: each read waits its turn for
    one of the hub's connections rather than failing (a failed read ended the client's stream)."""
    import asyncio

    from runs.streams import RedisHub

    url = redis_url_for("e2e")
    client = redis.Redis.from_url(url)
    run_ids = [uuid.uuid4() for _ in range(MANY)]
    for run_id in run_ids:
        client.xadd(events.stream_key(run_id), {"e": "delta", "d": "{}"}, id="0-*")

    async def read_all():
        hub = RedisHub(url)
        pool = hub.client.connection_pool
        try:
            got = await asyncio.gather(*(hub.read(run_id, 0) for run_id in run_ids), return_exceptions=True)
            return got, connections_made(pool), pool
        finally:
            await hub.client.aclose()  # as a WSGI request's hub is closed: its pool with it

    try:
        got, connections, pool = asyncio.run(read_all())
        assert not [r for r in got if isinstance(r, BaseException)], got[:3]
        assert all(r == [(1, "delta", "{}")] for r in got)
        assert 0 < connections <= events.REDIS_CONNECTIONS
        assert not [c for c in pool._available_connections if c.is_connected]  # none left open
    finally:
        client.delete(*(events.stream_key(run_id) for run_id in run_ids))


@pytest.mark.django_db(transaction=True)
def test_the_hub_answers_many_ended_checks_at_once_with_a_query_or_two(settings, monkeypatch, start_run_row):
    """Streams opened together fall due for their keep-alive check together: the hub answers the
    ones that ask while a check is under way with the next query, not a query each."""
    import asyncio

    from runs import streams

    settings.IS_ASGI = True  # as a web process: each check gives its thread's connection back

    ended, running = start_run_row(), start_run_row()
    ended.status, ended.finished_at = "failed", timezone.now()
    ended.save()
    queries: list[int] = []
    real = streams._ended_among

    def counted(run_ids):
        queries.append(len(run_ids))
        return real(run_ids)

    monkeypatch.setattr(streams, "_ended_among", counted)
    gone = uuid.uuid4()  # a run the table does not hold is not ended by the row

    async def ask_all():
        hub = streams.TableHub()
        asks = [hub.ended(run_id) for run_id in [ended.pk, running.pk, gone] * 100]
        return await asyncio.gather(*asks)

    answers = asyncio.run(ask_all())
    assert answers == [True, False, False] * 100
    assert len(queries) <= 2, queries
    assert sum(queries) <= 4  # each run asked about once or twice, however many clients asked


def test_an_append_publishes_its_events_and_a_large_one_only_as_a_wake():
    """The web tier hands a run's clients the events the worker published, without reading them
    back; an append too large to publish is announced empty, and the clients read the log."""
    url = redis_url_for("e2e")
    client = redis.Redis.from_url(url)
    log = events.RedisLog(url)
    run_id = uuid.uuid4()
    listener = client.pubsub()
    listener.subscribe(events.channel(run_id))
    assert listener.get_message(timeout=2)["type"] == "subscribe"
    try:
        assert log.append(run_id, [("status", '{"a":1}'), ("delta", '{"text":"x y"}')], 60) == 2
        large = json.dumps({"text": "z" * events.PUSH_MAX_BYTES})
        assert log.append(run_id, [("delta", large)], 60) == 3
        first, second = (listener.get_message(timeout=2) for _ in range(2))
        assert events.pushed(first["data"]) == [(1, "status", '{"a":1}'), (2, "delta", '{"text":"x y"}')]
        assert second["data"] == b"" and events.pushed(second["data"]) == []
        assert [entry_id for entry_id, _ in client.xrange(events.stream_key(run_id))] == [
            b"0-1",
            b"0-2",
            b"0-3",
        ]
        assert 0 < client.ttl(events.stream_key(run_id)) <= 60
    finally:
        listener.close()
        client.delete(events.stream_key(run_id))


def test_a_client_uses_the_events_it_was_handed_only_when_they_follow_on():
    import asyncio

    from runs.streams import RedisHub, Watcher

    url = redis_url_for("e2e")
    client = redis.Redis.from_url(url)
    run_id = uuid.uuid4()
    for n in (1, 2, 3):
        client.xadd(events.stream_key(run_id), {"e": "delta", "d": f"log {n}"}, id="0-*")

    async def next_events(handed, after):
        hub = RedisHub(url)
        watcher = Watcher()
        watcher.handed = handed
        try:
            return await hub.next_events(run_id, watcher, after)
        finally:
            await hub.client.aclose()

    try:
        follows = [(1, "delta", "handed 1"), (2, "delta", "handed 2"), (3, "delta", "handed 3")]
        assert asyncio.run(next_events(follows, 1)) == follows[1:]  # sent already: dropped, not re-read
        gap = [(3, "delta", "handed 3")]  # the message of event 2 was lost: the log has it
        assert asyncio.run(next_events(gap, 1)) == [(2, "delta", "log 2"), (3, "delta", "log 3")]
        assert asyncio.run(next_events([], 0)) == [(n, "delta", f"log {n}") for n in (1, 2, 3)]
    finally:
        client.delete(events.stream_key(run_id))
