"""Thin views: parse, call a service or selector, serialize. The gate's order of checks
(CONTRACT section 5) is: auth -> agent -> body -> input risk -> model -> quota."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from agents.selectors import agent_get
from billing.quota import QuotaExceeded
from billing.selectors import plan_for
from maschina.errors import ApiError
from maschina.schema import errors
from routing.access import required_tier
from routing.snapshot import get_rules

from . import admission, events, selectors, services
from .serializers import RunCreateSerializer, RunSerializer

STATUS_FILTER = OpenApiParameter("status", str, description="Only runs with this status.")
# Served by runs.async_views, which holds the answer (CONTRACT section 9).
WAIT = OpenApiParameter(
    "wait", int, description="Hold the answer until the run is terminal or this many seconds (0-60) pass."
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
        parameters=[WAIT],
        responses={200: RunSerializer, 202: RunSerializer, **errors(403, 429)},
    )
    def post(self, request, agent_id):
        agent = agent_get(owner=request.user, agent_id=agent_id)
        plan = plan_for(request.user)
        tier = get_rules().tiers[plan.tier_id]
        body = _valid(RunCreateSerializer, request.data, tier=tier)
        try:
            run = admission.run_create(user=request.user, plan=plan, key=request.auth, agent=agent, **body)
        except admission.InputTooLong:
            raise ApiError("input_too_long", "input.message is longer than 100,000 characters.")
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
        except QuotaExceeded as exceeded:
            raise _quota_exceeded(exceeded)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


def _model_denied(denied, tier) -> ApiError:
    denial, rules = denied.denial, denied.rules
    if denial.code == "unknown_model":
        return ApiError("unknown_model", f"Unknown model: {denial.model_id}", model=denial.model_id)
    if denial.code == "model_unavailable":
        return ApiError(
            "model_unavailable", f"Model {denial.model_id} is not available.", model=denial.model_id
        )
    entry = denial.entry
    return ApiError(
        "model_not_allowed",
        f"Model {entry.display_name} requires the {entry.min_tier} plan or higher.",
        status.HTTP_403_FORBIDDEN,
        model=denial.model_id,
        tier=tier.slug,
        required_tier=required_tier(rules, tier, entry),
    )


def _quota_exceeded(exceeded) -> ApiError:
    extra = {
        "quota": exceeded.quota,
        "used": exceeded.used,
        "limit": exceeded.limit,
        "resets_at": exceeded.resets_at,
    }
    if exceeded.quota == "tokens":
        extra.update(reserved=exceeded.reserved, requested=exceeded.requested)
    return ApiError(
        "quota_exceeded",
        f"The monthly {exceeded.quota} quota of your plan is used up.",
        status.HTTP_429_TOO_MANY_REQUESTS,
        **extra,
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
        return Response(RunSerializer(selectors.run_get(user=request.user, run_id=run_id)).data)


class RunCancelApi(GenericAPIView):
    serializer_class = RunSerializer

    @extend_schema(operation_id="runs_cancel", request=None, responses={200: RunSerializer, **errors(409)})
    def post(self, request, run_id):
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
