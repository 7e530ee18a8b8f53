"""Request bodies sent without a length (`Transfer-Encoding: chunked`) are read like any other
(CONTRACT section 14): DRF takes a request with no Content-Length as having no body, and Django's
WSGI request reads only Content-Length bytes, so a chunked PATCH would otherwise change nothing.

ChunkedBodyMiddleware reads such a body, at most the limit plus one byte, and gives the request its
length, so the parsers see it as if it had come with one (and answer 413 past the limit, after
authentication as for any body). A WSGI server that does not decode chunked bodies for the
application (no `wsgi.input_terminated`) leaves it unreadable: that is a JSON 411.
`capped_asgi_body` keeps Django's ASGI handler, which spools the whole body before the view, from
reading past the limit plus one byte."""

import io

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest

from .errors import error_response


def _without_length(meta) -> bool:
    return "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower() and not meta.get("CONTENT_LENGTH")


class ChunkedBodyMiddleware:
    # Both, so that under ASGI the held requests (runs.async_views) stay on the event loop: the
    # body is in memory there already, so reading it does not block.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        refused = _read_chunked(request)
        if self.is_async:
            return self._acall(request, refused)
        return refused or self.get_response(request)

    async def _acall(self, request, refused):
        return refused or await self.get_response(request)


def _read_chunked(request):
    """Give a chunked body without a length its length; the JSON 411 where it cannot be read."""
    if not _without_length(request.META):
        return None
    if isinstance(request, WSGIRequest):
        if not request.environ.get("wsgi.input_terminated"):
            return error_response(
                "length_required", "This server needs a Content-Length for request bodies.", 411
            )
        stream = request.environ["wsgi.input"]
    else:  # ASGI: Django has read the body already (capped_asgi_body bounds it)
        stream = request._stream
    body = stream.read(settings.MAX_REQUEST_BODY_BYTES + 1)
    request._stream = io.BytesIO(body)
    request.META["CONTENT_LENGTH"] = str(len(body))
    return None


def capped_asgi_body(app, limit: int):
    """The ASGI app, receiving at most `limit` bytes of a request body and then its end; what else
    the client sends is drained and dropped while the app waits for the disconnect."""

    async def capped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                if received > limit:
                    continue  # past the limit: the app has had the body's end already
                received += len(message.get("body", b""))
                if received > limit:
                    return {**message, "more_body": False}
                return message

        return await app(scope, limited_receive, send)

    return capped
