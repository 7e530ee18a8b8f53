"""The one settings module. Everything that differs between machines comes from the environment
(CONTRACT section 8); nothing here has a production secret."""

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("MASCHINA_VAR_DIR", BASE_DIR / "var"))


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name, default):
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


DEBUG = env_bool("DEBUG")
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required unless DEBUG=1")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG"

ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h.strip()
]

# Deployment behind HTTPS, each from an environment variable of the same name; off by default, so the
# embedded default and plain-HTTP setups keep working. With them set, `check --deploy` is clean
# (README, "Deployment hardening").
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT")
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # a load balancer's plain-HTTP health check
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE")
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE")
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS") or 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD")
# "HEADER,value", e.g. "HTTP_X_FORWARDED_PROTO,https": only behind a proxy that sets that header.
if os.environ.get("SECURE_PROXY_SSL_HEADER"):
    _header, _, _value = os.environ["SECURE_PROXY_SSL_HEADER"].partition(",")
    SECURE_PROXY_SSL_HEADER = (_header.strip(), _value.strip())
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "audit",
    "accounts",
    "routing",
    "billing",
    "agents",
    "runs",
    "axes",
]

# Admin login throttling (django-axes): after AXES_FAILURE_LIMIT failed logins for one username from
# one address, that pair is locked out for AXES_COOLOFF_TIME, the right password included.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("MASCHINA_ADMIN_LOGIN_FAILURE_LIMIT") or 5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=int(os.environ.get("MASCHINA_ADMIN_LOGIN_COOLOFF_MINUTES") or 30))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "maschina.logs.request_context",
    "maschina.middleware.StaticFilesMiddleware",  # WhiteNoise's, async-capable
    "maschina.request_bodies.ChunkedBodyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit.middleware.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "maschina.urls"
CSRF_FAILURE_VIEW = "maschina.errors.csrf_failure"
WSGI_APPLICATION = "maschina.wsgi.application"
# Paths are exact (CONTRACT section 1): never redirect /x to /x/.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Celery's pool for the worker: a few threads that hand runs to the provider loop (see
# CELERY_WORKER_POOL below); `-P` or
# MASCHINA_WORKER_POOL picks another. A worker on threads pools its database connections; one that forks
# must not (a fork copies no pool thread), and holds one connection per process anyway.
WORKER_POOL = os.environ.get("MASCHINA_WORKER_POOL", "threads")
IS_WORKER = "celery" in sys.argv[0] and "worker" in sys.argv[1:]
if IS_WORKER:
    for index, arg in enumerate(sys.argv[:-1]):
        if arg in ("-P", "--pool"):
            WORKER_POOL = sys.argv[index + 1]
    WORKER_POOL = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--pool=")), WORKER_POOL)
DB_POOL_SIZE = int(os.environ.get("MASCHINA_DB_POOL_SIZE", "16"))

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'maschina.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        # A kept connection is checked before reuse, so a database restart costs no failed request.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = (
        "maschina.db.postgresql"  # Django's, with a health check without a round trip
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker share the file: wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["CONN_MAX_AGE"] = 0
# The ASGI web app (maschina.asgi) runs each request's sync code on a new thread: a connection kept
# per thread would be left open by every request, so it takes them from a pool as the worker does.
IS_ASGI = env_bool("MASCHINA_ASGI")
if (
    ((IS_WORKER and WORKER_POOL == "threads") or IS_ASGI)
    and DATABASES["default"]["ENGINE"] == "maschina.db.postgresql"
    and DB_POOL_SIZE
):
    # A worker holds up to a thousand runs on threads, and each gives its connection back while it
    # waits on its provider (runs.execution): a pool of a few connections serves them all, so the
    # worker's connections stay bounded whatever its concurrency. No check on each checkout (a round
    # trip every time): a broken connection fails its statement, which the run's task retries.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_SIZE,
        "timeout": 10,
    }
if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3" and env_bool(
    "DATABASE_PREPARED_STATEMENTS", True
):
    # Server-side parameters, and psycopg prepares a statement from its fifth run on a connection:
    # PostgreSQL then skips parsing and planning the statements every run repeats. Off
    # (DATABASE_PREPARED_STATEMENTS=0) behind a pooler in transaction mode, which cannot keep them.
    DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
# Transactions are opened by services where they are needed, never per request.
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# WhiteNoise serves the admin's and Swagger UI's static files from the app processes. With finders on,
# it serves them straight from the installed apps, so no collectstatic step is needed; set STATIC_ROOT
# to run collectstatic for a deployment.
STATIC_ROOT = os.environ.get("STATIC_ROOT") or None
WHITENOISE_USE_FINDERS = True

# CONTRACT section 1: bodies over 1 MiB are refused with 413 (maschina.parsers; Django's own limit
# covers the admin's forms).
MAX_REQUEST_BODY_BYTES = 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["maschina.parsers.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "maschina.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "maschina.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "maschina.schema.ApiAutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Maschina run API",
    "DESCRIPTION": "Tier-gated LLM runs, billed exactly. See CONTRACT.md.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI at /api/docs/ from local static files (drf-spectacular-sidecar): no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Ids in paths are UUIDs in any letter case (maschina.converters); the schema says uuid.
    "PATH_CONVERTER_OVERRIDES": {"anyuuid": {"type": "string", "format": "uuid"}},
}

# --- Celery --------------------------------------------------------------------------------------
# With no CELERY_BROKER_URL the broker is kombu's filesystem transport: a folder shared by the web
# process and a separate worker process, so the service runs with no server installed.
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://"
RUN_TIMEOUT_CAP_SECS = 3600  # the largest max_timeout_secs a tier may set (CONTRACT section 4)

# Time budget of one execution task, derived from the run's own timeout_secs (see runs.dispatch):
# soft limit = timeout + TASK_SOFT_MARGIN, hard limit = timeout + TASK_HARD_MARGIN, and the broker's
# visibility timeout is above the largest possible hard limit, so Redis never hands a message that is
# still being worked on to a second worker just because the run is long.
TASK_SOFT_MARGIN_SECS = 20
TASK_HARD_MARGIN_SECS = 40
BROKER_VISIBILITY_TIMEOUT_SECS = RUN_TIMEOUT_CAP_SECS + TASK_HARD_MARGIN_SECS + 300

# kombu's default, set explicitly because runs.dispatch.fair_priority relies on it: the Redis
# transport keeps one list per step and the worker's BRPOP asks them in this order, so 0 is served first.
BROKER_PRIORITY_STEPS = [0, 3, 6, 9]
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any]  # folder paths (filesystem) or numbers (Redis)
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": BROKER_VISIBILITY_TIMEOUT_SECS,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        "priority_steps": BROKER_PRIORITY_STEPS,
    }
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "maschina.broker:Transport"  # kombu's, with one client per channel
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A publish that fails must fail fast: the run is already committed and the sweeper dispatches it
# later, so the API never makes a client wait on a dead broker (CONTRACT section 5).
CELERY_TASK_PUBLISH_RETRY = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A run is a provider call that waits on the network for seconds, so a worker holds many: a run waits
# as a coroutine on the provider loop, and the concurrency counts the runs a worker process holds, not
# its threads (runs.worker_pool; docs/operations.md has the measurements behind the choice). SQLite
# serialises writes, so the embedded default runs a handful.
CELERY_WORKER_POOL = "runs.worker_pool:TaskPool" if WORKER_POOL == "threads" else WORKER_POOL
CELERY_WORKER_CONCURRENCY = int(
    os.environ.get("MASCHINA_WORKER_CONCURRENCY")
    or (8 if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else 1000)
)
# How many of a worker process's runs do their own work (claim, settlement, events) at once: its work
# threads (runs.execution). More at once add no throughput, the GIL
# running one thread at a time, but every thread that wakes for a provider's fragment then waits
# behind all of them.
RUN_WORK_SLOTS = int(os.environ.get("MASCHINA_RUN_WORK_SLOTS") or 4)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = "maschina"
# A user's runs in flight that are queued at the first priority: another user's runs wait behind
# at most this many of theirs (runs.dispatch.fair_priority; the Redis broker only).
FAIR_SHARE = int(os.environ.get("MASCHINA_FAIR_SHARE") or 8)
# After a failed publish, how often a process probes the broker before publishing again
# (maschina.broker_circuit); meanwhile admissions leave their runs to the sweeper.
BROKER_PROBE_SECS = env_float("MASCHINA_BROKER_PROBE_SECS", 1.0)

# Periodic work: re-dispatch runs left queued, reap runs stuck executing (runs.sweeper).
SWEEP_INTERVAL_SECS = env_float("MASCHINA_SWEEP_INTERVAL_SECS", 10.0)
SWEEP_REDISPATCH_AFTER_SECS = env_float("MASCHINA_SWEEP_REDISPATCH_AFTER_SECS", 30.0)
SWEEP_REAP_GRACE_SECS = 45  # executing runs end within timeout_secs + 60 s (CONTRACT section 7)
# The sweep has a queue of its own, so a worker whose slots are all on long runs cannot hold it up
# (docker-compose runs a one-slot worker for it); a sweep not started within an interval expires.
CELERY_TASK_QUEUES = (Queue("maschina"), Queue("maschina.sweep"))
CELERY_TASK_ROUTES = {"runtime.sweep_runs": {"queue": "maschina.sweep"}}
CELERY_BEAT_SCHEDULE = {
    "sweep-runs": {
        "task": "runtime.sweep_runs",
        "schedule": SWEEP_INTERVAL_SECS,
        "options": {"expires": SWEEP_INTERVAL_SECS},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Providers -----------------------------------------------------------------------------------
ANTHROPIC_API_KEY = os.environ.get("ANTHROPIC_API_KEY", "")
ANTHROPIC_BASE_URL = os.environ.get("ANTHROPIC_BASE_URL") or None
if ANTHROPIC_BASE_URL is None:  # the SDK reads the variable itself and takes an empty one as its base URL
    os.environ.pop("ANTHROPIC_BASE_URL", None)
# The SDK's OpenTelemetry spans of each call: on only where an OpenTelemetry exporter is set up.
ANTHROPIC_OPEN_TELEMETRY = env_bool("ANTHROPIC_OPEN_TELEMETRY", False)
OLLAMA_BASE_URL = (os.environ.get("OLLAMA_BASE_URL") or "http://localhost:11434").rstrip("/")
PROVIDER_CONNECT_TIMEOUT_SECS = 5.0
# Retries of transient provider errors are ours (the SDK's own retries are off): attempts per model,
# and an exponential backoff base and cap. The cap keeps any sleep far below the task's soft limit.
PROVIDER_MAX_ATTEMPTS = int(os.environ.get("MASCHINA_PROVIDER_MAX_ATTEMPTS", "3"))
PROVIDER_BACKOFF_BASE_SECS = env_float("MASCHINA_PROVIDER_BACKOFF_BASE_SECS", 1.0)
PROVIDER_BACKOFF_CAP_SECS = 8.0
# How often a worker looks for cancels among the runs it holds while their provider calls are in
# flight, and after how long without a heartbeat a run's worker is taken for dead: the run may then
# be claimed again (runs.services.run_claim), by a redelivery or by the sweeper's re-dispatch. The
# heartbeats go out every sixth of that time (runs.inflight).
CANCEL_POLL_SECS = env_float("MASCHINA_CANCEL_POLL_SECS", 0.5)
HEARTBEAT_STALE_SECS = env_float("MASCHINA_HEARTBEAT_STALE_SECS", 30.0)
# Once the provider has answered, database outages are waited out with backoff capped at this.
DB_RETRY_BACKOFF_CAP_SECS = 2.0

# Alert webhooks: per-attempt timeout, and retry backoff (capped far below the visibility timeout).
ALERT_WEBHOOK_TIMEOUT_SECS = 5
# Webhooks to loopback or private addresses (a receiver on the operator's own network); link-local
# ones are refused whatever this says (billing.webhook_targets).
WEBHOOK_ALLOW_PRIVATE = os.environ.get("MASCHINA_WEBHOOK_ALLOW_PRIVATE") == "1"
ALERT_WEBHOOK_BACKOFF_BASE_SECS = env_float("MASCHINA_ALERT_WEBHOOK_BACKOFF_BASE_SECS", 5.0)
ALERT_WEBHOOK_BACKOFF_CAP_SECS = 300.0

# How often a process checks whether an operator changed tiers, models or rules (routing.snapshot).
RULES_REFRESH_SECS = env_float("MASCHINA_RULES_REFRESH_SECS", 0.5)

# GET /metrics answers only a request with `Authorization: Bearer <this>`; unset, it is off (404).
METRICS_TOKEN = os.environ.get("MASCHINA_METRICS_TOKEN", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s %(run_id)s %(user_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "filters": {
        "run": {"()": "maschina.logs.RunContext"},
        "one_line_warning": {"()": "maschina.log_filters.OneLineWarning"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            # MASCHINA_LOG_FORMAT=json: one JSON object a line, with the run id and user id.
            "formatter": "json" if os.environ.get("MASCHINA_LOG_FORMAT") == "json" else "plain",
            "filters": ["run"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # The anthropic SDK's HTTP client logs every request at INFO: a line per provider call that
        # our own run logs make redundant, at a cost to the worker's CPU on every run.
        "httpx2": {"level": os.environ.get("HTTP_CLIENT_LOG_LEVEL", "WARNING")},
        # A bad Host header: one WARNING line, not an ERROR with a traceback.
        "django.security.DisallowedHost": {"filters": ["one_line_warning"]},
    },
}

# Celery's Django fixup closes the database connection before and after every task unless this is set,
# so each run paid for a new PostgreSQL connection. Workers keep it, and check it around each
# task as Django does around a request (runs.apps), so CONN_MAX_AGE and the health checks apply.
CELERY_DB_REUSE_MAX = 1_000_000

# --- Run events (CONTRACT section 9; runs.events) ----------------------------------------------
# A run's events go to Redis Streams when the broker is Redis (or MASCHINA_EVENTS_REDIS_URL names
# one), else to a database table that the web process polls. Deltas are coalesced to one write per
# RUN_EVENTS_COALESCE_SECS per run, and a run keeps at most RUN_EVENTS_MAX events.
RUN_EVENTS_REDIS_URL = os.environ.get("MASCHINA_EVENTS_REDIS_URL") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else None
)
RUN_EVENTS_RETENTION_SECS = env_float("MASCHINA_RUN_EVENTS_RETENTION_SECS", 3660.0)
RUN_EVENTS_MAX = int(os.environ.get("MASCHINA_RUN_EVENTS_MAX", "2000"))
RUN_EVENTS_COALESCE_SECS = env_float(
    "MASCHINA_RUN_EVENTS_COALESCE_SECS", 0.05 if RUN_EVENTS_REDIS_URL else 0.25
)
RUN_EVENTS_KEEPALIVE_SECS = env_float("MASCHINA_RUN_EVENTS_KEEPALIVE_SECS", 10.0)
RUN_EVENTS_POLL_SECS = env_float("MASCHINA_RUN_EVENTS_POLL_SECS", 0.2)  # the table's, per web process
