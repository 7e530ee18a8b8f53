"""GET /healthz: can this process reach the database and the broker? (no auth)"""

from django.db import connection
from django.db.utils import Error as DatabaseError
from django.http import JsonResponse
from kombu.exceptions import KombuError

from .celery import app
from .errors import error_response


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        return False


def _broker_ok() -> bool:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except (KombuError, OSError):
        return False


def healthz(request):
    if request.method not in ("GET", "HEAD"):
        return error_response("method_not_allowed", f'Method "{request.method}" not allowed.', 405)
    checks = {"database": "ok" if _database_ok() else "down", "broker": "ok" if _broker_ok() else "down"}
    return JsonResponse(checks, status=200 if all(v == "ok" for v in checks.values()) else 503)
