"""GET /healthz: can this process reach the database and the broker? (no auth)"""

from django.db import connection
from django.db.utils import Error as DatabaseError
from django.http import JsonResponse

from .broker_circuit import broker_circuit, broker_reachable
from .errors import method_not_allowed

HEALTH_BROKER_TIMEOUT_SECS = 0.3  # /healthz answers well within 0.5 s


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        return False


def _broker_ok() -> bool:
    """Down at once while the broker's circuit is open; else one quick connection attempt, whose
    failure opens the circuit (so admissions stop trying the broker too)."""
    if broker_circuit.is_open:
        return False
    if broker_reachable(timeout=HEALTH_BROKER_TIMEOUT_SECS):
        return True
    broker_circuit.failed()
    return False


def healthz(request):
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request, "GET", "HEAD")
    checks = {"database": "ok" if _database_ok() else "down", "broker": "ok" if _broker_ok() else "down"}
    return JsonResponse(checks, status=200 if all(v == "ok" for v in checks.values()) else 503)
