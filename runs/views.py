"""Thin views: parse, call a service or selector, serialize. The gate's order of checks
(CONTRACT sections 5, 11 and 12) is: auth -> Idempotency-Key (a replay answers here) -> agent ->
body -> input risk -> model and the key's model list -> concurrency -> minute -> quota."""

from django.db import IntegrityError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from agents.selectors import agent_get
from billing.quota import QuotaExceeded
from billing.selectors import plan_for
from billing.throttle import RateLimited
from maschina import logs, metrics
from maschina.errors import ApiError
from maschina.schema import errors
from routing.access import denied_by_rule, required_tier
from routing.snapshot import get_rules

from . import admission, events, idempotency, refusals, selectors, services
from .models import RunStatus
from .serializers import RunCreateSerializer, RunSerializer

STATUS_FILTER = OpenApiParameter(
    "status", str, description="Only runs with this status.", enum=RunStatus.values
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="1-255 printable ASCII characters: a retry with the same key and body gets the same run.",
    # No space at either end: HTTP servers strip it from header values.
    pattern=r"^[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?$",
)
# Served by runs.async_views, which holds the answer (CONTRACT section 9).
WAIT = OpenApiParameter(
    "wait",
    {"type": "integer", "minimum": 0, "maximum": 60},
    description="Hold the answer until the run is terminal or this many seconds (0-60) pass.",
)


def _valid(serializer_class, data, **context):
    serializer = serializer_class(data=data, context=context)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class RunCreateApi(GenericAPIView):
    serializer_class = RunSerializer

    @extend_schema(
        operation_id="agents_run",
        request=RunCreateSerializer,
        parameters=[IDEMPOTENCY_KEY, WAIT],
        responses={200: RunSerializer, 202: RunSerializer, **errors(403, 409, 429)},
    )
    @metrics.admission_observed
    def post(self, request, agent_id):
        idempotency_key = idempotency.idempotency_key_of(request)
        agent = agent_get(owner=request.user, agent_id=agent_id)  # the 404 before the body's 400 or 413
        digest = idempotency.request_digest(agent_id, request.data) if idempotency_key else ""
        if idempotency_key:
            replayed = _replayed(request, idempotency_key, digest)
            if replayed is not None:
                return replayed
        plan = plan_for(request.user)
        tier = get_rules().tiers[plan.tier_id]
        body = _valid(RunCreateSerializer, request.data, tier=tier)
        try:
            run, window = admission.run_admit(
                user=request.user,
                plan=plan,
                key=request.auth,
                agent=agent,
                idempotency=(idempotency_key, digest) if idempotency_key else None,
                **body,
            )
        except IntegrityError:
            if not idempotency_key:
                raise
            # A racing request with the same key admitted its run first; this one left nothing.
            replayed = _replayed(request, idempotency_key, digest)
            if replayed is None:
                raise ApiError(
                    "idempotency_key_in_progress",
                    "A request with this Idempotency-Key is still being admitted; retry shortly.",
                    status.HTTP_409_CONFLICT,
                )
            return replayed
        except admission.InputTooLong as too_long:
            raise ApiError("input_too_long", str(too_long))
        except admission.RiskBlocked as blocked:
            raise ApiError("risk_blocked", "The input was blocked by a risk check.", flags=blocked.flags)
        except admission.ModelNotAString:
            raise ApiError(
                "invalid",
                "The request has invalid fields.",
                fields={"model": ["Must be a non-empty string of valid Unicode."]},
            )
        except admission.ModelDenied as denied:
            raise _model_denied(denied, tier)
        except admission.KeyModelNotAllowed as refused:
            raise refusals.key_model_not_allowed(refused.model_id, refused.allowed_models)
        except RateLimited as limited:
            raise refusals.rate_limited(limited)
        except QuotaExceeded as exceeded:
            raise refusals.quota_exceeded(exceeded)
        logs.bind_run_id(run.pk)
        return Response(
            RunSerializer(run).data, status=status.HTTP_202_ACCEPTED, headers=refusals.rate_headers(window)
        )


def _replayed(request, idempotency_key: str, digest: str) -> Response | None:
    """The answer to a repeated request: the run its key created, or None if there is none."""
    try:
        run = idempotency.run_replayed(user=request.user, key=idempotency_key, digest=digest)
    except idempotency.KeyReused:
        raise ApiError(
            "idempotency_key_reused",
            "This Idempotency-Key was used with another agent or body.",
            status.HTTP_409_CONFLICT,
        )
    if run is None:
        return None
    headers = {
        "Idempotent-Replayed": "true",
        **refusals.rate_headers(refusals.minute_window_of(request.user)),
    }
    code = status.HTTP_200_OK if run.is_terminal else status.HTTP_202_ACCEPTED
    return Response(RunSerializer(run).data, status=code, headers=headers)


def _model_denied(denied, tier) -> ApiError:
    denial, rules = denied.denial, denied.rules
    if denial.code == "unknown_model":
        return ApiError("unknown_model", f"Unknown model: {denial.model_id}", model=denial.model_id)
    if denial.code == "model_unavailable":
        return ApiError(
            "model_unavailable", f"Model {denial.model_id} is not available.", model=denial.model_id
        )
    entry = denial.entry
    if denied_by_rule(rules, tier, entry):  # the tier ranks high enough, but a rule leaves it out
        message = f"Model {entry.display_name} is not included in the {tier.slug} plan."
    else:
        message = f"Model {entry.display_name} requires the {entry.min_tier} plan or higher."
    return ApiError(
        "model_not_allowed",
        message,
        status.HTTP_403_FORBIDDEN,
        model=denial.model_id,
        tier=tier.slug,
        required_tier=required_tier(rules, tier, entry),
    )


class AgentRunListApi(GenericAPIView):
    serializer_class = RunSerializer

    @extend_schema(
        operation_id="agents_runs_list", parameters=[STATUS_FILTER], responses=RunSerializer(many=True)
    )
    def get(self, request, agent_id):
        agent = agent_get(owner=request.user, agent_id=agent_id)
        runs = selectors.run_list(user=request.user, agent=agent, status=request.query_params.get("status"))
        return self.get_paginated_response(RunSerializer(self.paginate_queryset(runs), many=True).data)


class RunListApi(GenericAPIView):
    serializer_class = RunSerializer

    @extend_schema(operation_id="runs_list", parameters=[STATUS_FILTER], responses=RunSerializer(many=True))
    def get(self, request):
        runs = selectors.run_list(user=request.user, status=request.query_params.get("status"))
        return self.get_paginated_response(RunSerializer(self.paginate_queryset(runs), many=True).data)


class RunDetailApi(GenericAPIView):
    serializer_class = RunSerializer

    @extend_schema(operation_id="runs_retrieve", parameters=[WAIT])
    def get(self, request, run_id):
        logs.bind_run_id(run_id)
        return Response(RunSerializer(selectors.run_get(user=request.user, run_id=run_id)).data)


class RunCancelApi(GenericAPIView):
    serializer_class = RunSerializer

    @extend_schema(operation_id="runs_cancel", request=None, responses={200: RunSerializer, **errors(409)})
    def post(self, request, run_id):
        logs.bind_run_id(run_id)
        run = selectors.run_get(user=request.user, run_id=run_id)
        try:
            run = services.run_cancel(run=run)
        except services.RunFinished:
            run.refresh_from_db()
            raise ApiError(
                "run_finished",
                f"The run has already finished ({run.status}).",
                status.HTTP_409_CONFLICT,
                status=run.status,
            )
        events.publish_end(run.pk)  # the stream's `done` goes out now; the worker bills the call
        return Response(RunSerializer(run).data)
