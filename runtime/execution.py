"""Executing one run: claim it, call its provider with our retries and the model's fallbacks, store
what the provider reported, finish and settle. The provider call runs on a helper thread so this
one can notice a cancel or the deadline while it is in flight (CONTRACT section 7)."""
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from agents.models import Run, RunStatus
from billing.services import usage_settle
from routing.access import usable_fallback
from routing.snapshot import get_rules

from .runners import RUNNERS, Completion, CompletionRequest, ProviderError, provider_model_id
from .services import (
    run_claim,
    run_count_call,
    run_deadline,
    run_finish,
    run_is_canceled,
    run_record_completion,
    run_switch_model,
    timeout_error,
)

logger = logging.getLogger(__name__)

_executor_lock = threading.Lock()
_executor = None


def _pool() -> ThreadPoolExecutor:
    # Created lazily, in the process that uses it (never across a fork). Calls abandoned on a cancel
    # keep a thread until their own timeout, which is the run's deadline, so the pool stays bounded.
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="provider-call")
        return _executor


class _Stop(Exception):
    """The run was canceled or reached its deadline while we waited."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _seconds_left(deadline) -> float:
    return (deadline - timezone.now()).total_seconds()


def _wait(run_id, deadline, future=None, delay=None):
    """Wait for `future` (or `delay` seconds), checking for a cancel and the deadline as we go."""
    until = time.monotonic() + delay if delay is not None else None
    while True:
        step = settings.CANCEL_POLL_SECS
        if until is not None:
            step = min(step, until - time.monotonic())
            if step <= 0:
                return None
        if future is not None:
            try:
                return future.result(timeout=step)
            except FutureTimeout:
                pass
        else:
            time.sleep(step)
        if run_is_canceled(run_id):
            raise _Stop("canceled")
        # One second of slack lets the provider client report its own timeout first.
        if _seconds_left(deadline) < -1:
            raise _Stop("timeout")


def _call_once(run: Run, provider: str, model_id: str, deadline) -> Completion:
    remaining = _seconds_left(deadline)
    if remaining <= 0:
        raise _Stop("timeout")
    request = CompletionRequest(
        model=provider_model_id(provider, model_id),
        system=run.system_prompt,
        message=run.input["message"],
        max_tokens=run.max_tokens,
        timeout=remaining,
    )
    run_count_call(run.pk)
    return _wait(run.pk, deadline, future=_pool().submit(RUNNERS[provider], request))


def _call_with_retries(run: Run, provider: str, model_id: str, deadline) -> Completion:
    """Up to PROVIDER_MAX_ATTEMPTS calls with capped exponential backoff; raises the last error."""
    for attempt in range(settings.PROVIDER_MAX_ATTEMPTS):
        try:
            return _call_once(run, provider, model_id, deadline)
        except ProviderError as error:
            if not error.retriable or attempt == settings.PROVIDER_MAX_ATTEMPTS - 1:
                raise
            backoff = settings.PROVIDER_BACKOFF_BASE_SECS * 2**attempt
            delay = min(settings.PROVIDER_BACKOFF_CAP_SECS, max(backoff, error.retry_after or 0))
            if delay >= _seconds_left(deadline):
                raise
            logger.info("run %s: %s on attempt %d, retrying in %.2fs", run.pk, error.code, attempt + 1, delay)
            _wait(run.pk, deadline, delay=delay)
    raise AssertionError("unreachable")


def execute(run_id) -> None:
    run = run_claim(run_id)
    if run is None:
        resume(run_id)
        return
    deadline = run_deadline(run)
    rules = get_rules()
    tier = rules.tiers.get(run.tier)
    entry = rules.models.get(run.catalog_model)
    provider, model_id = run.provider, run.model
    try:
        while True:
            try:
                completion = _call_with_retries(run, provider, model_id, deadline)
            except ProviderError as error:
                fallback = usable_fallback(rules, tier, entry) if (error.retriable and tier and entry) else None
                if fallback is None:
                    status = RunStatus.TIMED_OUT if error.code == "timeout" else RunStatus.FAILED
                    run_finish(run.pk, status, {"code": error.code, "message": error.message})
                    return
                logger.info("run %s: %s out of retries (%s), falling back to %s", run.pk, model_id, error.code, fallback.id)
                if not run_switch_model(run.pk, fallback.id, fallback):
                    usage_settle(run.pk)  # canceled meanwhile
                    return
                provider, model_id, entry = fallback.provider, fallback.id, fallback
                continue
            run_record_completion(run.pk, completion)
            run_finish(run.pk, RunStatus.COMPLETED)
            return
    except _Stop as stop:
        if stop.code == "timeout":
            run_finish(run.pk, RunStatus.TIMED_OUT, timeout_error(run))
        else:  # canceled: the status is already final, only the reservation is left to settle
            usage_settle(run.pk)
    except SoftTimeLimitExceeded:
        run_finish(run.pk, RunStatus.TIMED_OUT, timeout_error(run))
    except Exception:
        logger.exception("run %s failed unexpectedly", run.pk)
        run_finish(run.pk, RunStatus.FAILED, {"code": "internal", "message": "An internal error occurred."})
        raise


def resume(run_id) -> None:
    """A delivery of a run someone else claimed (a redelivery or a duplicate). Finish only what is
    safe to finish without calling the provider: a recorded answer, or an unsettled terminal run."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("run %s does not exist; nothing to do", run_id)
    elif run.status == RunStatus.EXECUTING and run.input_tokens is not None:
        run_finish(run.pk, RunStatus.COMPLETED)
    elif run.is_terminal and run.settled_at is None and run.status != RunStatus.CANCELED:
        usage_settle(run.pk)
