"""kombu's Redis transport, keeping one Redis client per channel.

kombu builds a new redis.Redis client (and with it ~170 response callbacks) for every command it
sends outside its event loop: every publish of a run, every ack of one. That showed in the benchmarks'
CPU profiles (bench/README.md). The client holds no state of its own between commands (each takes
a connection from the channel's pool and gives it back), so one per channel does the same work."""

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


try:  # the Redis client is only there when the broker is Redis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover
    # Only a stand-in to catch, when redis is absent.
    from kombu.exceptions import KombuError as RedisError  # type: ignore[assignment]

__all__ = ["Channel", "RedisError", "Transport"]
