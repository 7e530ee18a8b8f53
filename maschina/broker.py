"""kombu's Redis transport, keeping one Redis client per channel, and a lean publisher of task
messages onto it.

kombu builds a new redis.Redis client (and with it ~170 response callbacks) for every command it
sends outside its event loop: every publish of a run, every ack of one. That showed in the benchmarks'
CPU profiles (bench/README.md). The client holds no state of its own between commands (each takes
a connection from the channel's pool and gives it back), so one per channel does the same work.

TaskPublisher writes the message apply_async would write (Celery's protocol 2, JSON, as kombu's
Redis transport stores it) with one LPUSH: Celery's routing, producer pool, signals and kombu's
message preparation cost an admission about four times the push itself (docs/architecture.md).
tests/test_broker.py holds it to Celery's own message, field by field."""

import base64
import bisect
import functools
import json
import os
import socket
import uuid
from collections.abc import Sequence

from kombu.transport import redis


class Channel(redis.Channel):
    _client = None

    def _create_client(self, asynchronous=False):
        # _create_client is private to kombu, so kombu-stubs leaves it out.
        if asynchronous:  # the event loop's own client, made once by kombu already
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        if self._client is None:
            self._client = super()._create_client()  # type: ignore[misc]
        return self._client


class Transport(redis.Transport):
    Channel = Channel


PUBLISH_CONNECTIONS = 32  # per process: a publish holds one for a single LPUSH


class TaskPublisher:
    """Publishes messages of tasks whose results are ignored (as every task here is) to a Redis
    broker, as Celery with kombu's Redis transport does."""

    def __init__(self, url: str, steps: Sequence[int], connect_timeout: float, timeout: float):
        import redis as redis_py

        # A full pool makes a publish wait for a connection rather than fail (redis-py's default pool
        # raises past 100), which would open the broker's circuit on a healthy broker.
        pool = redis_py.BlockingConnectionPool.from_url(
            url,
            max_connections=PUBLISH_CONNECTIONS,
            timeout=timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
        )
        self.client = redis_py.Redis.from_pool(pool)
        self.steps = sorted(steps)
        self.reply_to = str(uuid.uuid4())  # results are ignored; Celery sends an address all the same

    def queue_key(self, queue: str, priority: int) -> str:
        """The list of `queue` at the step kombu files `priority` under: clamped to 0-9
        (_get_message_priority), then the step at or below it (Channel.priority, _q_for_pri)."""
        step = self.steps[bisect.bisect(self.steps, min(max(priority, 0), 9)) - 1]
        return f"{queue}{redis.Channel.sep}{step}" if step else queue

    def publish(
        self,
        name: str,
        args: list,
        kwargs: dict,
        *,
        task_id: str,
        queue: str,
        priority: int,
        time_limits: tuple[int | None, int | None],
    ) -> None:
        soft, hard = time_limits
        body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        headers: dict[str, object] = {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [hard, soft],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": repr(kwargs),
            "origin": _origin(os.getpid()),
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        properties = {
            "correlation_id": task_id,
            "reply_to": self.reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        message = {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
        self.client.lpush(self.queue_key(queue, priority), json.dumps(message))


@functools.cache
def _origin(pid: int) -> str:
    return f"gen{pid}@{socket.gethostname()}"


@functools.cache
def _publisher(url: str) -> TaskPublisher:
    from django.conf import settings

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    return TaskPublisher(
        url,
        options["priority_steps"],
        connect_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT,
        timeout=options["socket_timeout"],
    )


def task_publisher() -> TaskPublisher | None:
    """The process's publisher when the broker is Redis (redis://, no key prefix); else None, and
    apply_async publishes."""
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    if not url.startswith("redis://") or settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix"):
        return None
    return _publisher(url)


try:  # the Redis client is only there when the broker is Redis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover
    # Only a stand-in to catch, when redis is absent.
    from kombu.exceptions import KombuError as RedisError  # type: ignore[assignment]

__all__ = ["Channel", "RedisError", "TaskPublisher", "Transport", "task_publisher"]
