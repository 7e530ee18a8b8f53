from types import SimpleNamespace

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from maschina.errors import ApiError
from routing.snapshot import get_rules

from .history import GROUPS, BadRange, parse_range, usage_history
from .models import Alert
from .periods import PERIOD_PATTERN, parse_period, period_of
from .plans import limits_for
from .renderers import UsageHistoryCsvRenderer
from .selectors import plan_for, usage_report
from .serializers import AlertSerializer, UsageHistorySerializer, UsageSerializer


class UsageApi(APIView):
    @extend_schema(
        operation_id="usage_retrieve",
        responses=UsageSerializer,
        parameters=[
            OpenApiParameter(
                "period", str, description="YYYY-MM; default: the current UTC month.", pattern=PERIOD_PATTERN
            )
        ],
    )
    def get(self, request):
        raw = request.query_params.get("period")
        try:
            period = parse_period(raw) if raw is not None else period_of(timezone.now())
        except ValueError:
            raise ApiError(
                "invalid",
                "The request has invalid fields.",
                fields={"period": ["Must be a month as YYYY-MM."]},
            )
        plan = plan_for(request.user)
        tier = get_rules().tiers[plan.tier_id]
        report = usage_report(
            user=request.user, tier_slug=tier.slug, limits=limits_for(plan, tier), period=period
        )
        return Response(UsageSerializer(report).data)


class AlertListApi(GenericAPIView):
    serializer_class = AlertSerializer

    @extend_schema(operation_id="alerts_list", responses=AlertSerializer(many=True))
    def get(self, request):
        alerts = Alert.objects.filter(user=request.user).order_by("-created_at", "-id")
        return self.get_paginated_response(AlertSerializer(self.paginate_queryset(alerts), many=True).data)


class AcceptHeaderOnly(DefaultContentNegotiation):
    """The Accept header picks JSON or CSV; DRF's `?format=` override is no parameter of this API."""

    # The negotiation reads only URL_FORMAT_OVERRIDE of its settings.
    settings = SimpleNamespace(URL_FORMAT_OVERRIDE=None)  # type: ignore[assignment]


class UsageHistoryApi(APIView):
    """CONTRACT section 13: the caller's usage lines over a date range, as JSON or CSV."""

    renderer_classes = [JSONRenderer, UsageHistoryCsvRenderer]
    content_negotiation_class = AcceptHeaderOnly

    @extend_schema(
        operation_id="usage_history",
        responses={(200, "application/json"): UsageHistorySerializer, (200, "text/csv"): str},
        parameters=[
            OpenApiParameter(
                "from", OpenApiTypes.DATE, description="YYYY-MM-DD (UTC); default: the first of this month."
            ),
            OpenApiParameter(
                "to", OpenApiTypes.DATE, description="YYYY-MM-DD (UTC), inclusive; default: today."
            ),
            OpenApiParameter("group_by", str, enum=list(GROUPS), description="Default: day."),
            OpenApiParameter("format", exclude=True),
        ],
    )
    def get(self, request):
        query = request.query_params
        try:
            start, end, group_by = parse_range(
                query.get("from"), query.get("to"), query.get("group_by"), timezone.now().date()
            )
        except BadRange as bad:
            raise ApiError("invalid", "The request has invalid fields.", fields=bad.fields)
        results = usage_history(user_id=request.user.pk, start=start, end=end, group_by=group_by)
        return Response({"from": start, "to": end, "group_by": group_by, "results": results})

    def handle_exception(self, exc):
        # Errors are JSON whatever the Accept header asked for (CONTRACT section 1).
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), "application/json"
        return super().handle_exception(exc)
