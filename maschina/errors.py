"""The one error format of the API (CONTRACT section 1):
{"error": {"code": "<snake_case>", "message": "<one human sentence>", ...extra}}."""

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error our own code raises on purpose, with its code, status and extra fields."""

    def __init__(self, code, message, status_code=status.HTTP_400_BAD_REQUEST, *, headers=None, **extra):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status_code
        self.extra = extra
        self.headers = headers or {}  # answer headers (Retry-After, X-RateLimit-*)


def error_body(code, message, **extra):
    return {"error": {"code": code, "message": message, **extra}}


def error_response(code, message, status_code, **extra):
    return JsonResponse(error_body(code, message, **extra), status=status_code)


def method_not_allowed(request, *allowed: str) -> JsonResponse:
    """The 405 of a view outside DRF, with the `Allow` header that RFC 9110 requires of it."""
    response = error_response("method_not_allowed", f'Method "{request.method}" not allowed.', 405)
    response["Allow"] = ", ".join(allowed)
    return response


def _flatten(detail):
    """DRF field errors as {"field": ["message", ...]}; nested fields are joined with dots."""
    fields: dict[str, list[str]] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            for index, inner in enumerate(value):
                walk(f"{prefix}.{index}" if prefix else str(index), inner)
        else:
            messages = value if isinstance(value, list) else [value]
            fields.setdefault(prefix or "non_field_errors", []).extend(str(m) for m in messages)

    walk("", detail)
    return fields


_SIMPLE = {
    exceptions.NotAuthenticated: ("not_authenticated", "Authentication credentials were not provided."),
    exceptions.MethodNotAllowed: ("method_not_allowed", None),
    exceptions.NotAcceptable: ("not_acceptable", None),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", None),
    exceptions.Throttled: ("throttled", None),
    exceptions.PermissionDenied: ("permission_denied", None),
}


def exception_handler(exc, context):
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        body, code = error_body(exc.code, exc.message, **exc.extra), exc.status_code
        headers.update(exc.headers)
    elif isinstance(exc, (Http404, exceptions.NotFound)):
        body, code = error_body("not_found", "Not found."), 404
    elif isinstance(exc, RequestDataTooBig):
        body, code = error_body("payload_too_large", "Request body is larger than 1 MiB."), 413
    elif isinstance(exc, exceptions.ParseError):
        body, code = error_body("invalid_json", "Request body is not valid JSON."), 400
    elif isinstance(exc, exceptions.ValidationError):
        body, code = (
            error_body("invalid", "The request has invalid fields.", fields=_flatten(exc.detail)),
            400,
        )
    elif isinstance(exc, exceptions.AuthenticationFailed):
        body, code = error_body("invalid_api_key", str(exc.detail)), 401
    elif isinstance(exc, PermissionDenied):
        body, code = error_body("permission_denied", "You do not have permission to do this."), 403
    elif isinstance(exc, exceptions.APIException):
        slug, message = next(
            ((s, m) for cls, (s, m) in _SIMPLE.items() if isinstance(exc, cls)),
            (exc.default_code, None),
        )
        body, code = error_body(slug, message or str(exc.detail)), exc.status_code
    else:
        logger.exception("unhandled error in %s", context.get("view"))
        body, code = error_body("internal", "An internal error occurred."), 500
    if code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    # Throttled sets .wait in __init__; drf-stubs does not declare it.
    if isinstance(exc, exceptions.Throttled) and exc.wait:  # type: ignore[attr-defined]
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    return Response(body, status=code, headers=headers)


# Django-level handlers for whatever never reaches a DRF view (unknown paths, crashes in middleware).
def handler404(request, exception=None):
    return error_response("not_found", "Not found.", 404)


def handler500(request):
    return error_response("internal", "An internal error occurred.", 500)


def handler400(request, exception=None):
    if isinstance(exception, RequestDataTooBig):
        return error_response("payload_too_large", "Request body is larger than 1 MiB.", 413)
    return error_response("bad_request", "Bad request.", 400)


def csrf_failure(request, reason=""):
    return error_response("permission_denied", "CSRF verification failed.", 403)


def handler403(request, exception=None):
    return error_response("permission_denied", "You do not have permission to do this.", 403)
