"""The baseline of bench/http_admission.py: the least an admission endpoint does in this app.
Same authentication, parser and renderer as POST /agents/{id}/run; one INSERT; one Celery message."""

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import BenchRow
from .tasks import noop


class BaselineApi(APIView):
    def post(self, request):
        row = BenchRow.objects.create(user_id=request.user.pk, payload=request.data)
        noop.apply_async(args=[row.pk])
        return Response({"id": row.pk}, status=status.HTTP_202_ACCEPTED)
