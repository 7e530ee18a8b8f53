"""The ASGI handler: Django's, with the middleware in their loop forms (maschina.loop_middleware), and a
request that never ran code on a thread of its own finished on the event loop.

Django finishes every request with `sync_to_async(response.close)()`. Its receivers (closing the
thread's database connections and caches, resetting the URLconf) are for the thread the request's
sync code ran on, so Django sends them there; for a request that had none (an async view that does
its database work on the loop's shared pool: `?wait`, `/events`), that call made a thread only to
close, and asgiref a second one to join it. A thousand streams ending together made two thousand
threads on the loop's critical path. Such a request's receivers find nothing of theirs on the loop's
thread either, so they run there. Every other request is finished as Django finishes it."""

import asyncio

from asgiref.sync import SyncToAsync, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import asgi
from django.db import close_old_connections, reset_queries
from django.urls import set_script_prefix

from .loop_middleware import LoopFormsLoading

# Django's request_started receivers, which maschina.asgi disconnects: when a request starts, the thread
# made for its sync code has no connection to close and no queries to forget, so under ASGI they only
# cost every request a hop to that thread.
REQUEST_STARTED_HOPS = (close_old_connections, reset_queries)


def _request_thread_made() -> bool:
    """Whether this request's sync code ran on a thread of its own (asgiref makes it on first use)."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    return context is None or context in SyncToAsync.context_to_thread_executor


class ASGIHandler(LoopFormsLoading, asgi.ASGIHandler):
    async def _finish(self, response) -> None:
        """Close the response (or, with none, send request_finished) where the request's code ran."""
        finish = response.close if response is not None else self._send_finished
        if _request_thread_made():
            await sync_to_async(finish)()
        else:
            finish()

    def _send_finished(self) -> None:
        signals.request_finished.send(sender=self.__class__)

    async def handle(self, scope, receive, send):
        """Django 5.2's ASGIHandler.handle, finishing the request through _finish."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(asgi.get_script_prefix(scope))
        await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None  # create_request gives one or the other
            body_file.close()
            await self.send_response(error_response, send)
            await self._finish(error_response)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected while the response was sent
            return response

        # The disconnect listener first: it raises nothing unexpected that would keep the request's
        # task from being canceled.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()  # views may handle their cancellation
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            response = None
        await self._finish(response)
        body_file.close()
