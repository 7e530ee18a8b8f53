from .context import acting_as
from .models import Source


class AuditActorMiddleware:
    """Changes made during a request by a signed-in staff user (the admin) are recorded as theirs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or not user.is_staff:
            return self.get_response(request)
        with acting_as(f"{user.get_username()} (user id {user.pk})", Source.ADMIN):
            return self.get_response(request)
