"""The views that hold a request (CONTRACT section 9): `?wait=N` on POST /agents/{id}/run and GET
/runs/{id}, and GET /runs/{id}/events. Plain Django async views, so under ASGI a held request is a
task, not a thread; the work before the hold is the DRF view's (its auth, checks and errors), run
in the thread Django gives sync code. Under WSGI the two `wait` views are sync views that enter
an event loop only to hold a request (Django runs an async view under WSGI on an event loop of its
own, started per request, which cost the admission path more than its statement). Each view
carries the DRF view it wraps as `cls`, so the OpenAPI schema describes it as before."""

import asyncio

from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.generics import GenericAPIView
from rest_framework.utils.encoders import JSONEncoder

from accounts.authentication import ApiKeyAuthentication
from maschina.db.in_thread import in_thread
from maschina.errors import ApiError, error_response, method_not_allowed
from maschina.query_params import MAX_ASCII_INT, ascii_int
from maschina.schema import errors

from . import selectors, streams
from .models import Run
from .serializers import RunSerializer
from .views import RunCreateApi, RunDetailApi

MAX_WAIT_SECS = 60


class _InvalidWait(Exception):
    pass


def _wait_secs(request: HttpRequest) -> int:
    raw = request.GET.get("wait")
    if raw is None:
        return 0
    value = ascii_int(raw)
    if value is None or value > MAX_WAIT_SECS:
        raise _InvalidWait()
    return value


def _authenticate(request: HttpRequest):
    """(user, key) as the API's authentication finds them, or the JSON 401 to answer."""
    try:
        found = ApiKeyAuthentication().authenticate(request)
    except exceptions.AuthenticationFailed as failed:
        return _unauthorized("invalid_api_key", str(failed.detail))
    except ApiError as refused:  # an expired key
        return _unauthorized(refused.code, refused.message)
    if found is None:
        return _unauthorized("not_authenticated", "Authentication credentials were not provided.")
    return found


def _unauthorized(code, message) -> JsonResponse:
    response = error_response(code, message, 401)
    response["WWW-Authenticate"] = "Bearer"
    return response


def _invalid_wait(request: HttpRequest) -> HttpResponse:
    """The 400 for a bad `wait`, after the auth that every answer starts with."""
    found = _authenticate(request)
    if isinstance(found, HttpResponse):
        return found
    return error_response(
        "invalid",
        "The request has invalid fields.",
        400,
        fields={"wait": [f"Must be an integer from 0 to {MAX_WAIT_SECS}."]},
    )


def _drf(view, request, **kwargs):
    response = view(request, **kwargs)
    response.render()
    return response


_create = RunCreateApi.as_view()
_detail = RunDetailApi.as_view()


def _run_json(run) -> dict:
    return dict(RunSerializer(run).data)


_KEPT_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Idempotent-Replayed",
    "Retry-After",
)


async def _held(response, seconds: int, status_when_running: int) -> HttpResponse:
    run = await in_thread(lambda: Run.objects.get(pk=response.data["id"]))
    try:
        run = await streams.wait_terminal(run, seconds)
    finally:
        if not settings.IS_ASGI:
            await streams.close_hub()
    data = await in_thread(_run_json, run)
    status = 200 if run.is_terminal else status_when_running
    held = JsonResponse(data, status=status, encoder=JSONEncoder)
    for name in _KEPT_HEADERS:  # what the gate said of the request (rate limits, a replay) stands
        if name in response:
            held[name] = response[name]
    return held


def _create_holds(response, seconds: int) -> bool:
    return seconds > 0 and response.status_code == 202


def _detail_holds(response, seconds: int) -> bool:
    return seconds > 0 and response.status_code == 200 and response.data["status"] not in streams.TERMINAL


@csrf_exempt
async def _run_create_async(request, agent_id):
    """POST /agents/{id}/run[?wait=N]: the gate (runs.views.RunCreateApi), then the hold."""
    try:
        seconds = _wait_secs(request)
    except _InvalidWait:
        return await in_thread(_invalid_wait, request)
    response = await in_thread(_drf, _create, request, agent_id=agent_id)
    return await _held(response, seconds, 202) if _create_holds(response, seconds) else response


@csrf_exempt
async def _run_detail_async(request, run_id):
    """GET /runs/{id}[?wait=N]."""
    try:
        seconds = _wait_secs(request)
    except _InvalidWait:
        return await in_thread(_invalid_wait, request)
    response = await in_thread(_drf, _detail, request, run_id=run_id)
    return await _held(response, seconds, 200) if _detail_holds(response, seconds) else response


def _sync_view(drf_view, holds, status_when_running: int):
    """The same view for a WSGI server: sync, entering an event loop only to hold."""

    @csrf_exempt
    def view(request, **kwargs):
        try:
            seconds = _wait_secs(request)
        except _InvalidWait:
            return _invalid_wait(request)
        response = _drf(drf_view, request, **kwargs)
        if not holds(response, seconds):
            return response
        return async_to_sync(_held)(response, seconds, status_when_running)

    return view


_run_create_sync = _sync_view(_create, _create_holds, 202)
_run_detail_sync = _sync_view(_detail, _detail_holds, 200)


run_create = _run_create_async if settings.IS_ASGI else _run_create_sync
run_detail = _run_detail_async if settings.IS_ASGI else _run_detail_sync


def _last_event_id(request: HttpRequest) -> int | None:
    """The id to resume after: 0 when the header is absent (a browser's EventSource sends none
    before its first event), None when it is not an event id (empty included)."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        return 0
    return ascii_int(raw.strip())


def _run_for(request: HttpRequest, run_id):
    found = _authenticate(request)
    if isinstance(found, HttpResponse):
        return found
    user, _ = found
    try:
        return selectors.run_get(user=user, run_id=run_id)
    except Http404:
        return error_response("not_found", "Not found.", 404)


@csrf_exempt
async def run_events(request, run_id):
    """GET /runs/{id}/events: server-sent events (runs.streams.event_stream)."""
    if request.method != "GET":
        return method_not_allowed(request, "GET")
    found = await in_thread(_run_for, request, run_id)
    if isinstance(found, HttpResponse):
        return found
    after = _last_event_id(request)
    if after is None:
        return error_response(
            "invalid",
            "The request has invalid fields.",
            400,
            fields={"Last-Event-ID": [f"Must be an event id: an integer from 0 to {MAX_ASCII_INT}."]},
        )
    events = streams.event_stream(found, after)
    response = StreamingHttpResponse(
        events if settings.IS_ASGI else _one_by_one(events), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must pass events on as they come
    return response


def _one_by_one(events):
    """The stream for a WSGI server, which iterates it synchronously (Django would otherwise read an
    async iterator to its end before sending any of it): each event as it comes, on a loop of this
    request's own, so the request holds its worker while it streams."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(events.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(events.aclose())
        loop.run_until_complete(streams.close_hub())
        loop.close()


# One server-sent event as its fields read (`data` is a line of JSON: the run, or {"text": ...}).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "event": {"type": "string", "enum": ["status", "delta", "done"]},
        "data": {"type": "string"},
    },
    "required": ["id", "event", "data"],
}


class RunEventsApi(GenericAPIView):
    """Schema only: runs.async_views.run_events serves the requests."""

    serializer_class = RunSerializer

    @extend_schema(
        operation_id="runs_events",
        description="Follow a run: its events so far (kept an hour after it ends), then as they happen.",
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                {"type": "integer", "minimum": 0, "maximum": MAX_ASCII_INT},
                OpenApiParameter.HEADER,
                description="Resume after this event id (1, 2, 3 ... per run).",
            )
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                SSE_EVENT,
                description=(
                    "Server-sent events, each with an `id:`, an `event:` (`status`: the run; `delta`: "
                    '`{"text": ...}`; `done`: the terminal run, and the stream ends) and one `data:` line '
                    "of JSON; `: keep-alive` comments while nothing else is sent."
                ),
            ),
            **errors(404),
        },
    )
    def get(self, request, run_id):
        raise AssertionError("served by runs.async_views.run_events")


for _view, _api in (
    (_run_create_async, RunCreateApi),
    (_run_create_sync, RunCreateApi),
    (_run_detail_async, RunDetailApi),
    (_run_detail_sync, RunDetailApi),
    (run_events, RunEventsApi),
):
    vars(_view).update(cls=_api, initkwargs={})
