"""Django's own middleware with its hooks called on the event loop, and the mixin with which the ASGI
handler (maschina.asgi_handler) loads them in place of the Django middleware that MIDDLEWARE names.

Under ASGI, Django calls every hook of a MiddlewareMixin middleware (process_request, process_view,
process_response) through sync_to_async: a hop to the request's thread and back, about fifteen per
request, several milliseconds of CPU for an API call. These hooks do no I/O: they read headers and
cookies and set attributes, and the session and the user are loaded lazily, by the view, on its own
thread. So under ASGI these subclasses call them on the loop. Two hooks can reach the database: saving a
session and storing messages in it. They still take the hop, and only when there is something to save.

MIDDLEWARE itself keeps Django's names (`check --deploy` looks for them there), and a WSGI server
runs those classes unchanged."""

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import ImproperlyConfigured
from django.middleware import clickjacking, common, csrf, security


class _OnTheLoop:
    """Mixed in before a MiddlewareMixin subclass: its hooks, called on the loop in async mode."""

    def __init__(self, get_response):
        super().__init__(get_response)  # type: ignore[call-arg]
        middleware: Any = self
        sync_view = getattr(middleware, "process_view", None)
        if middleware.async_mode and sync_view is not None:
            # Django adapts a sync process_view with a hop too; a coroutine it calls as it is.
            async def process_view(request, view_func, view_args, view_kwargs):
                return sync_view(request, view_func, view_args, view_kwargs)

            middleware.process_view = process_view

    def response_needs_thread(self, request, response) -> bool:
        """Whether process_response may reach the database for this response."""
        return False

    async def __acall__(self, request):
        middleware: Any = self
        process_request = getattr(middleware, "process_request", None)
        response = process_request(request) if process_request is not None else None
        response = response or await middleware.get_response(request)
        process_response = getattr(middleware, "process_response", None)
        if process_response is None:
            return response
        if self.response_needs_thread(request, response):
            return await sync_to_async(process_response, thread_sensitive=True)(request, response)
        return process_response(request, response)


class SecurityMiddleware(_OnTheLoop, security.SecurityMiddleware):
    pass


class SessionMiddleware(_OnTheLoop, sessions.SessionMiddleware):
    def response_needs_thread(self, request, response) -> bool:
        session = request.session
        return session.accessed or session.modified  # a save, or a read of what it holds


class CommonMiddleware(_OnTheLoop, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(_OnTheLoop, csrf.CsrfViewMiddleware):
    def __init__(self, get_response):
        if settings.CSRF_USE_SESSIONS:  # its hooks would then read and write the session
            raise ImproperlyConfigured("This CsrfViewMiddleware keeps its secret in a cookie.")
        super().__init__(get_response)


class AuthenticationMiddleware(_OnTheLoop, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(_OnTheLoop, messages.MessageMiddleware):
    def response_needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)  # may go to the session


class XFrameOptionsMiddleware(_OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


def _path(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# What the ASGI handler loads for each of Django's middleware that MIDDLEWARE may name: each form's
# second base is the Django class it extends.
LOOP_FORMS = {
    _path(form.__bases__[1]): _path(form)
    for form in (
        SecurityMiddleware,
        SessionMiddleware,
        CommonMiddleware,
        CsrfViewMiddleware,
        AuthenticationMiddleware,
        MessageMiddleware,
        XFrameOptionsMiddleware,
    )
}


class LoopFormsLoading:
    """Mixed in before a Django handler: it loads MIDDLEWARE with the loop forms in Django's place."""

    def load_middleware(self, is_async=False):
        declared = settings.MIDDLEWARE
        settings.MIDDLEWARE = [LOOP_FORMS.get(path, path) for path in declared]
        try:
            super().load_middleware(is_async)  # type: ignore[misc]
        finally:
            settings.MIDDLEWARE = declared
