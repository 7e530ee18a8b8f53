"""The ASGI handler finishes a request where its code ran (maschina.asgi_handler): a request that ran
nothing on a thread of its own (an async view, as `?wait` and `/events` are) is closed on the event
loop, with no thread made for it; a sync view's request is closed on the thread the view ran on, whose
database connections the close gives back. Driven with hand-made ASGI messages against views of this
module; the real streams under uvicorn are tests/test_streams.py."""

import asyncio
import threading

import pytest
from django.core import signals
from django.http import JsonResponse
from django.urls import path

from maschina.asgi_handler import REQUEST_STARTED_HOPS, ASGIHandler


async def on_the_loop(request):
    return JsonResponse({"ok": True})


VIEW_THREADS: list[int] = []  # the threads on_a_thread ran on


def on_a_thread(request):
    VIEW_THREADS.append(threading.get_ident())
    return JsonResponse({"ok": True})


async def held(request):
    await asyncio.sleep(30)
    return JsonResponse({"ok": True})


urlpatterns = [path("loop", on_the_loop), path("thread", on_a_thread), path("held", held)]


@pytest.fixture
def handler(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["testserver"]
    for receiver in REQUEST_STARTED_HOPS:  # as maschina.asgi serves
        signals.request_started.disconnect(receiver)
    yield ASGIHandler()
    for receiver in REQUEST_STARTED_HOPS:
        signals.request_started.connect(receiver)


@pytest.fixture
def finished_on():
    """The threads request_finished was sent on, from now on."""
    threads: list[int] = []

    def receiver(**kwargs):
        threads.append(threading.get_ident())

    signals.request_finished.connect(receiver)
    yield threads
    signals.request_finished.disconnect(receiver)


async def call(handler, route, disconnect_after=None):
    """The status of GET /route through the handler; the client disconnects after `disconnect_after` s."""
    messages: list[dict] = []
    asked = False

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600 if disconnect_after is None else disconnect_after)
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/{route}",
        "raw_path": f"/{route}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    await handler(scope, receive, send)
    starts = [m for m in messages if m["type"] == "http.response.start"]
    return starts[0]["status"] if starts else None


def threads_made_during(coroutine) -> tuple[object, int]:
    """The coroutine's result, run on a loop of this thread, and how many threads it started."""
    started = []
    start = threading.Thread.start

    def counting_start(self):
        started.append(self.name)
        start(self)

    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        return asyncio.run(coroutine), len(started)
    finally:
        threading.Thread.start = start  # type: ignore[method-assign]


def test_an_async_views_request_is_finished_on_the_loop_with_no_thread(handler, finished_on):
    status, made = threads_made_during(call(handler, "loop"))
    assert status == 200
    assert finished_on == [threading.get_ident()]  # asyncio.run's loop runs on this thread
    assert made == 0


def test_a_sync_views_request_is_finished_on_the_thread_it_ran_on(handler, finished_on):
    VIEW_THREADS.clear()
    status, made = threads_made_during(call(handler, "thread"))
    assert status == 200
    assert VIEW_THREADS and VIEW_THREADS[0] != threading.get_ident()
    assert finished_on == VIEW_THREADS  # where its connections are
    assert made >= 1


def test_a_client_that_leaves_an_async_view_finishes_its_request_on_the_loop(handler, finished_on):
    status, made = threads_made_during(call(handler, "held", disconnect_after=0.05))
    assert status is None  # nothing was sent: the view was canceled
    assert finished_on == [threading.get_ident()]
    assert made == 0
