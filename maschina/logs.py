"""Log records carry the run and the user they are about, when there is one: a worker binds them for
the run it executes, and MASCHINA_LOG_FORMAT=json prints them as fields of one JSON object a line."""

import contextvars
import logging

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_user_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("user_id", default=None)


def bind(run) -> None:
    """The records logged from here on in this thread (or task) are about `run` and its user."""
    _run_id.set(str(run.pk))
    _user_id.set(run.user_id)


class RunContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = getattr(record, "run_id", None) or _run_id.get()
        record.user_id = getattr(record, "user_id", None) or _user_id.get()
        return True
