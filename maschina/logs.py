"""Log records carry the run and the user they are about, when there is one: a worker binds them for
the run it executes, a web request for the key's user and the run it admits or addresses, and
MASCHINA_LOG_FORMAT=json prints them as fields of one JSON object a line."""

import contextvars
import logging

from asgiref.sync import iscoroutinefunction
from django.utils.decorators import sync_and_async_middleware

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_user_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("user_id", default=None)


def bind(run) -> None:
    """The records logged from here on in this thread (or task) are about `run` and its user."""
    _run_id.set(str(run.pk))
    _user_id.set(run.user_id)


def bind_user(user_id: int) -> None:
    _user_id.set(user_id)


def bind_run_id(run_id) -> None:
    _run_id.set(str(run_id))


def unbind() -> None:
    _run_id.set(None)
    _user_id.set(None)


@sync_and_async_middleware
def request_context(get_response):
    """A request's records start about no one: a web worker's thread serves one request after
    another, and what the last one bound must not leak into the next one's lines."""

    async def async_middleware(request):
        unbind()
        return await get_response(request)

    def sync_middleware(request):
        unbind()
        return get_response(request)

    return async_middleware if iscoroutinefunction(get_response) else sync_middleware


class RunContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = getattr(record, "run_id", None) or _run_id.get()
        record.user_id = getattr(record, "user_id", None) or _user_id.get()
        return True
