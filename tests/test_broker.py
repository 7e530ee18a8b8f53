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
