"""Who is making a change, for the audit record.

The admin sets it per request (audit.middleware). Anything else is named after its process: a
`manage.py <command>` (or django-admin) run is a command, everything else (workers, shells, scripts)
is code."""

import contextlib
import getpass
import os
import sys
from contextvars import ContextVar

from .models import Source

_actor: ContextVar[tuple[str, str] | None] = ContextVar("audit_actor", default=None)


@contextlib.contextmanager
def acting_as(actor: str, source: str):
    token = _actor.set((actor[:255], source))
    try:
        yield
    finally:
        _actor.reset(token)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _is_django_command_line(program: str) -> bool:
    """manage.py, django-admin, or python -m django."""
    name = os.path.basename(program)
    return name in {"manage.py", "django-admin", "django-admin.py"} or (
        name == "__main__.py" and os.path.basename(os.path.dirname(program)) == "django"
    )


def current() -> tuple[str, str]:
    """(actor, source) of the change being made now."""
    explicit = _actor.get()
    if explicit is not None:
        return explicit
    argv = sys.argv
    if len(argv) > 1 and _is_django_command_line(argv[0]):
        return f"manage.py {argv[1]} (os user {_os_user()})", Source.COMMAND
    program = os.path.basename(argv[0]) if argv and argv[0] else "python"
    return f"{program} pid {os.getpid()} (os user {_os_user()})", Source.CODE
