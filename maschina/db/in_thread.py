"""Database work of an async view (runs.async_views, runs.streams). Under ASGI on the event loop's
shared thread pool rather than the request's own thread: that thread lives as long as the request,
so a held request or an open stream would keep it, and its connection, all along. Under WSGI on the
request's thread, whose connection (and transaction, in a test) it is. Each call gives its
connection back when done (to the pool, where there is one)."""

import functools

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from . import release_connection


def _run(fn, args, kwargs):
    close_old_connections()  # one left broken or past its age by an earlier call on this thread
    try:
        return fn(*args, **kwargs)
    finally:
        release_connection()


async def in_thread(fn, *args, **kwargs):
    if settings.IS_ASGI:
        return await sync_to_async(functools.partial(_run, fn, args, kwargs), thread_sensitive=False)()
    return await sync_to_async(functools.partial(fn, *args, **kwargs))()
