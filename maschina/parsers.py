import io

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers
from rest_framework.exceptions import ParseError


class LimitedJSONParser(parsers.JSONParser):
    """JSON bodies up to MAX_REQUEST_BODY_BYTES; larger ones are a 413 (CONTRACT section 1).

    The check lives in the parser, so it runs when a view first reads the body: after
    authentication and the agent lookup, as the contract's order of checks wants (401 and 404
    win over 413). It never reads more than the limit plus one byte."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_REQUEST_BODY_BYTES
        request = (parser_context or {}).get("request")
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            declared = 0
        if declared > limit:
            raise RequestDataTooBig()
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise RequestDataTooBig()
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:  # nesting deep enough to exhaust the decoder's stack
            raise ParseError("JSON nested too deeply.")
