from django.conf import settings

from .errors import error_response


class RequestSizeLimitMiddleware:
    """413 for bodies over the limit before anything reads them (CONTRACT section 1).

    Django would raise RequestDataTooBig only for form data; a JSON body is read through
    request.body, which checks the same limit, so a declared Content-Length is refused here and
    an undeclared (chunked) one is refused by the error handler when the view reads it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response("bad_request", "Content-Length is not a number.", 400)
        if length > settings.MAX_REQUEST_BODY_BYTES:
            return error_response("payload_too_large", "Request body is larger than 1 MiB.", 413)
        return self.get_response(request)
