"""kombu's Redis transport, keeping one Redis client per channel.

kombu builds a new redis.Redis client (and with it ~170 response callbacks) for every command it
sends outside its event loop: every publish of a run, every ack of one. That cost ~0.25 ms of CPU each
on the benchmark machine (issue 6). The client holds no state of its own between commands (each takes
a connection from the channel's pool and gives it back), so one per channel does the same work."""

from kombu.transport import redis


class Channel(redis.Channel):
    _client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:  # the event loop's own client, made once by kombu already
            return super()._create_client(asynchronous=True)
        if self._client is None:
            self._client = super()._create_client()
        return self._client


class Transport(redis.Transport):
    Channel = Channel
