"""Every Prometheus metric of the product, and the one-line helpers its call sites use.

With PROMETHEUS_MULTIPROC_DIR set (before any process imports prometheus_client), every web and
worker process writes its samples to files there and GET /metrics sums them all: that is how several
gunicorn workers and Celery workers show as one service. Without it, each process serves its own.
The queue depth is read from the database when scraped, so it is right whichever process answers."""

import asyncio
import functools
import os
import socket
import time
from concurrent.futures import Future

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily

NODE = os.environ.get("MASCHINA_NODE_NAME") or socket.gethostname()

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Sample files are named by process; containers sharing the directory (compose's volume) each
    # number their processes from 1, so the name holds the node too.
    values.ValueClass = values.MultiProcessValue(lambda: f"{NODE}-{os.getpid()}")

RUNS_ADMITTED = Counter("maschina_runs_admitted", "Runs admitted by POST /agents/{id}/run.", ["model"])
RUNS_REFUSED = Counter(
    "maschina_runs_refused", "Runs refused by POST /agents/{id}/run, by error code.", ["reason"]
)
RUNS_FINISHED = Counter(
    "maschina_runs_finished",
    "Runs settled in a terminal status, by the provider that last ran them and the error code.",
    ["status", "provider", "error_code"],
)
BILLED_TOKENS = Counter("maschina_billed_tokens", "Tokens billed at settlement.", ["tier", "model"])
RUNS_IN_FLIGHT = Gauge(
    "maschina_runs_in_flight", "Runs a worker node is executing.", ["node"], multiprocess_mode="livesum"
)
ADMISSION_SECONDS = Histogram(
    "maschina_admission_seconds",
    "Time to answer POST /agents/{id}/run, refusals included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PROVIDER_SECONDS = Histogram(
    "maschina_provider_call_seconds",
    "Time of one provider call, by provider and outcome (ok or the error code).",
    ["provider", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RUNS_OVER_RESERVATION = Counter(
    "maschina_runs_over_reservation",
    "Runs settled with a bill above their reservation: a provider that reported more than the bound.",
)
SWEEPER_ACTIONS = Counter("maschina_sweeper_actions", "What the sweeper did, by action.", ["action"])
WEBHOOK_DELIVERIES = Counter(
    "maschina_webhook_deliveries", "Alert webhook delivery attempts, by outcome.", ["outcome"]
)


def admission_observed(post):
    """Decorates the run-creating view: its latency, and the run admitted or the refusal's code."""

    @functools.wraps(post)
    def observed(view, request, *args, **kwargs):
        started = time.perf_counter()
        try:
            response = post(view, request, *args, **kwargs)
        except Exception as exc:
            RUNS_REFUSED.labels(getattr(exc, "code", None) or exc.__class__.__name__).inc()
            raise
        finally:
            ADMISSION_SECONDS.observe(time.perf_counter() - started)
        RUNS_ADMITTED.labels(response.data.get("model", "")).inc()
        return response

    return observed


def run_settled(run, status: str) -> None:
    """A run settled in `status`: counted by provider and error code, its bill by tier and model."""
    error_code = (run.error or {}).get("code", "") if status != "completed" else ""
    RUNS_FINISHED.labels(status, run.provider, error_code).inc()
    if run.billed_tokens:
        BILLED_TOKENS.labels(run.tier, run.model).inc(run.billed_tokens)


def over_reservation() -> None:
    RUNS_OVER_RESERVATION.inc()


def provider_timed(provider: str, future: Future | asyncio.Future) -> None:
    """Times a provider call from now until its future is done."""
    started = time.perf_counter()

    def done(finished: Future | asyncio.Future) -> None:
        error = None if finished.cancelled() else finished.exception()
        outcome = "ok" if error is None else getattr(error, "code", None) or error.__class__.__name__
        PROVIDER_SECONDS.labels(provider, outcome).observe(time.perf_counter() - started)

    future.add_done_callback(done)


def in_flight(by: int) -> None:
    RUNS_IN_FLIGHT.labels(NODE).inc(by)


def sweeper_actions(counts: dict) -> dict:
    """Counts a sweep's actions; returns them, as the sweep task does."""
    for action, count in counts.items():
        if count:
            SWEEPER_ACTIONS.labels(action).inc(count)
    return counts


def webhook_delivered(outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome).inc()


class QueueDepthCollector:
    """Runs admitted and not yet claimed, read from the database at each scrape."""

    def collect(self):
        from runs.selectors import queued_count

        gauge = GaugeMetricFamily("maschina_runs_queued", "Runs queued, not yet executing.")
        gauge.add_metric([], queued_count())
        yield gauge
