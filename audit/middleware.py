from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

from .context import acting_as
from .models import Source


class AuditActorMiddleware:
    """Changes made during a request by a signed-in staff user (the admin) are recorded as theirs.
    Async-capable, so that under ASGI the async views below it stay async."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or not user.is_staff:
            return self.get_response(request)
        with acting_as(f"{user.get_username()} (user id {user.pk})", Source.ADMIN):
            return self.get_response(request)

    async def _acall(self, request):
        # Only the admin's session users can be staff; an API request (a Bearer key) has no session.
        if settings.SESSION_COOKIE_NAME not in request.COOKIES:
            return await self.get_response(request)
        user = await request.auser()
        if not user.is_authenticated or not user.is_staff:
            return await self.get_response(request)
        with acting_as(f"{user.get_username()} (user id {user.pk})", Source.ADMIN):
            return await self.get_response(request)
