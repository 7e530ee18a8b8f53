"""The OpenAPI schema documents every answer an operation can give, errors included, so clients and
schemathesis can check responses against it (tests/test_schemathesis.py). An error body may carry
more fields than `code` and `message` (CONTRACT section 1 lists them per error)."""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

from .fields import KnownFieldsOnly

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorDetail",
            fields={"code": serializers.CharField(), "message": serializers.CharField()},
        )
    },
)

_DESCRIPTIONS = {
    400: (
        "Invalid request: malformed JSON, invalid fields or query parameters, or input the risk checks block."
    ),
    401: "Missing, unknown, revoked or expired API key.",
    403: "The plan's tier or the API key may not use the model, or a restricted key may not manage keys.",
    404: "No such object for this key's user.",
    409: "The run has already finished, or the Idempotency-Key was used for another request.",
    413: "Request body larger than 1 MiB.",
    415: "Request body is not application/json.",
    429: "A monthly quota of the plan or the key is used up, or a rate limit is reached.",
}


def errors(*statuses: int) -> dict:
    """Extra error answers of one operation, for @extend_schema(responses=...)."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[status]) for status in statuses
    }


# DRF's CharField refuses NUL characters (PostgreSQL cannot store them): the schema says so.
NO_NUL_PATTERN = "^[^\\u0000]*$"
# A CharField that may not be blank strips whitespace (str.strip) first, so it needs a character
# besides: the class names the ones JavaScript's \s leaves out.
NOT_BLANK_PATTERN = "^[^\\u0000]*[^\\u0000\\s\\u001c-\\u001f\\u0085][^\\u0000]*$"


class ApiAutoSchema(AutoSchema):
    """Adds the errors every operation of its kind can answer: 400 and 401 everywhere, 404 when the
    path names an object, 413 and 415 when there is a request body. (@extend_schema replaces
    get_response_serializers, so they are added to the response bodies it produced.)"""

    def _map_serializer(self, serializer, direction, bypass_extensions=False):
        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(serializer, KnownFieldsOnly):
            schema["additionalProperties"] = False
        return schema

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if (
            direction == "request"
            and isinstance(field, serializers.CharField)
            and schema.get("type") == "string"
            and not {"pattern", "enum", "format"} & set(schema)
        ):
            blank_refused = field.trim_whitespace and not field.allow_blank
            schema["pattern"] = NOT_BLANK_PATTERN if blank_refused else NO_NUL_PATTERN
        return schema

    def _insert_field_validators(self, field, schema):
        super()._insert_field_validators(field, schema)
        one_of = schema.get("oneOf", [])
        if (
            len(one_of) == 2
            and one_of[0].get("pattern") == NO_NUL_PATTERN
            and one_of[1] == {"type": "string", "maxLength": 0}
        ):
            # The blank string's branch drf-spectacular adds for allow_blank beside a pattern: the
            # pattern admits "" already, and under oneOf a value both branches admit is invalid.
            del schema["oneOf"]
            schema.update(one_of[0])

    def _get_response_bodies(self, direction="response"):
        bodies = super()._get_response_bodies(direction)
        statuses = [400, 401]
        if "{" in self.path:
            statuses.append(404)
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            statuses += [413, 415]
        for status, response in errors(*statuses).items():
            if str(status) not in bodies:
                bodies[str(status)] = self._get_response_for_code(response, str(status), direction=direction)
        # Refused by gunicorn's WSGI workers before the app sees the request, so not JSON (uvicorn, the
        # recommended server, answers a request line it cannot parse with a text/plain 400 instead).
        bodies.setdefault(
            "414",
            {
                "description": "Request line over 4094 bytes.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
        )
        return bodies
