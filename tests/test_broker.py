"""maschina.broker: kombu's Redis transport with one client per channel, against the real Redis. (Every
run of the end-to-end tests goes through it: published by gunicorn, consumed and acked by a worker.)"""

from maschina.broker import Transport
from maschina.celery import app


def test_celery_publishes_through_our_transport_and_each_channel_keeps_one_client():
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        assert channel._create_client(asynchronous=True) is not first


def test_the_lean_publisher_writes_the_message_apply_async_writes():
    """Field by field what Celery (with kombu's Redis transport) pushes for a run's task, at each
    priority step, with and without the timeout: only the per-message tag and the reply address (a
    result queue no run uses) may differ. On a queue of its own, so no worker takes the messages."""
    import base64
    import json
    import uuid

    from maschina.broker import task_publisher
    from runs.tasks import execute_run

    publisher = task_publisher()
    assert publisher is not None  # the suite's broker is Redis
    queue = f"maschina-test-{uuid.uuid4().hex}"
    client = publisher.client
    try:
        for priority, kwargs in ((0, {"timeout_secs": 60}), (3, {}), (6, {"timeout_secs": 5}), (9, {})):
            task_id = str(uuid.uuid4())
            execute_run.apply_async(
                args=[task_id],
                kwargs=kwargs,
                task_id=task_id,
                soft_time_limit=80,
                time_limit=100,
                priority=priority,
                queue=queue,
            )
            publisher.publish(
                execute_run.name,
                [task_id],
                kwargs,
                task_id=task_id,
                queue=queue,
                priority=priority,
                time_limits=(80, 100),
            )
            key = publisher.queue_key(queue, priority)
            assert key == (queue if priority == 0 else f"{queue}\x06\x16{priority}")
            ours, celerys = (json.loads(m) for m in client.lrange(key, 0, -1))  # LPUSH: newest first
            assert client.delete(key) == 1
            for message in (ours, celerys):
                message["properties"].pop("delivery_tag")
                message["properties"].pop("reply_to")
            assert base64.b64decode(ours["body"]) == base64.b64decode(celerys["body"])
            assert ours == celerys, priority
    finally:
        client.delete(*[publisher.queue_key(queue, p) for p in (0, 3, 6, 9)], f"_kombu.binding.{queue}")


def test_publishes_past_the_pool_bound_wait_for_a_connection_rather_than_fail():
    """A process's publishes share a bounded pool: the 33rd at once waits for a connection (redis-py's
    default pool would raise past its bound, and the broker's circuit would open on a healthy
    broker). 200 publishes from 200 threads released together all arrive."""
    import threading
    import uuid

    import redis

    from maschina.broker import PUBLISH_CONNECTIONS, task_publisher

    publisher = task_publisher()
    assert publisher is not None
    pool = publisher.client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool) and pool.max_connections == PUBLISH_CONNECTIONS
    queue = f"maschina-test-{uuid.uuid4().hex}"
    start, errors = threading.Barrier(200), []

    def publish():
        start.wait()
        task_id = str(uuid.uuid4())
        try:
            publisher.publish(
                "runtime.execute_run",
                [task_id],
                {},
                task_id=task_id,
                queue=queue,
                priority=0,
                time_limits=(80, 100),
            )
        except Exception as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(200)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == [] and publisher.client.llen(queue) == 200
    finally:
        publisher.client.delete(queue)
