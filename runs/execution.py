"""Executing one run: claim it, call its provider with our retries and the model's fallbacks, store
what the provider reported, finish and settle. The provider call runs elsewhere, so this thread
can notice a cancel, a takeover or the deadline while it is in flight (CONTRACT section 7): a
coroutine runner's on the process's provider loop (providers.aio), where a waiting call holds no
thread, any other's on a helper thread. The heartbeats and the checks for all the runs of a
process are rounds of runs.inflight.

The call streams its text to the run's events (runs.events), written by this thread. A call that
is stopped (a cancel, the deadline) is closed, which closes its connection, and the run is billed
for what the provider had reported by then, or for the whole answer of a call that cannot be
closed, once it comes. A call that fails after text went out is not retried or continued on a
fallback: the client has seen that text (CONTRACT section 9)."""

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from maschina import logs, metrics
from maschina.db import release_connection
from providers import (
    ASYNC_RUNNERS,
    RUNNERS,
    Call,
    Completion,
    CompletionRequest,
    ProviderError,
    aio,
    provider_model_id,
)
from routing.access import usable_fallback
from routing.snapshot import get_rules

from . import events, inflight
from .models import Run, RunStatus
from .selectors import run_key_models
from .services import (
    is_stale,
    run_claim,
    run_complete,
    run_count_call,
    run_deadline,
    run_finish,
    run_holder_state,
    run_record_completion,
    run_record_usage,
    run_settle,
    run_switch_model,
    run_token_alerts_catch_up,
    run_token_alerts_record,
    timeout_error,
)

logger = logging.getLogger(__name__)
DATABASE_DOWN = (OperationalError, InterfaceError)

_Runner = Callable[[CompletionRequest], Completion]
_Inbox = queue.SimpleQueue[tuple[_Runner, CompletionRequest, Future[Completion]]]  # one call at a time

# Inboxes of the provider-call threads that are free. A thread serves one call at a time and frees
# itself when the call returns; a call abandoned on a cancel or the deadline keeps its thread until
# its own timeout (the run's deadline), so it never holds up the next run's call, which takes another
# free thread or starts one. Kept threads save starting one per call, which showed in the worker's
# CPU profile; there are never more than the calls once in flight at the same time.
_free_threads: queue.SimpleQueue[_Inbox] = queue.SimpleQueue()


def _start_call(runner: _Runner, request: CompletionRequest) -> Future:
    """Run the provider call on a thread of its own, so this one can notice a cancel while it waits."""
    future: Future[Completion] = Future()
    try:
        inbox = _free_threads.get_nowait()
    except queue.Empty:
        inbox = queue.SimpleQueue()
        threading.Thread(target=_serve_calls, args=(inbox,), name="provider-call", daemon=True).start()
    inbox.put((runner, request, future))
    return future


def _serve_calls(inbox):
    while True:
        runner, request, future = inbox.get()
        try:
            future.set_result(runner(request))
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            future.set_exception(exc)
        del runner, request, future  # nothing of a finished call outlives it
        _free_threads.put(inbox)


# Work slots of this process's runs (settings.RUN_WORK_SLOTS): a run holds one from its claim to its
# last events, and gives it up while it waits on its provider or for a closed call to end.
_slots = threading.BoundedSemaphore(settings.RUN_WORK_SLOTS)


@contextlib.contextmanager
def _slot_given_up():
    _slots.release()
    try:
        yield
    finally:
        _slots.acquire()


class _Stop(Exception):
    """The run was canceled, taken over, or reached its deadline while we waited."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason  # canceled | lost | timeout


def _persist(write):
    """Run a database write that must not be lost: once the provider has answered, its answer only
    exists in this process, so a database outage is waited out (with capped backoff) rather than
    dropped. The task's soft time limit bounds the wait."""
    delay = 0.25
    while True:
        try:
            return write()
        except DATABASE_DOWN as exc:
            logger.warning("database unavailable (%s); retrying in %.2fs", exc.__class__.__name__, delay)
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, settings.DB_RETRY_BACKOFF_CAP_SECS)


class Execution:
    def __init__(self, run: Run, token, call_counted: bool = False):
        self.run, self.token = run, token
        self.call_counted = call_counted  # the claim already counted the next provider call
        self.deadline = run_deadline(run)
        self.completion: Completion | None = None  # the provider's answer, once there is one
        self.held = inflight.hold(run.pk, token)  # released when execute() ends
        self.events = events.Writer(run, wake=self.held.changed.set)
        self.call: Call | None = None  # the provider call in flight, or the last one
        self.future: Future | None = None

    def seconds_left(self) -> float:
        return (self.deadline - timezone.now()).total_seconds()

    def check(self):
        """Raise _Stop if the last round found the run canceled or taken over, or it is past its
        deadline (with a second of slack, so the provider client reports its own timeout first)."""
        if self.held.state != "ok":
            raise _Stop(self.held.state)
        if self.seconds_left() < -1:
            raise _Stop("timeout")

    def wait(self, future: Future | None = None, delay: float | None = None):
        """Wait for `future` (or `delay` seconds) without a database connection, woken by the answer or
        by a round of runs.inflight that found the run canceled or taken over; take a round when one
        is due."""
        release_connection()
        with _slot_given_up():
            try:
                return self._wait(future, delay)
            finally:  # before queueing for a slot again, so the rounds go on meanwhile
                inflight.stop_waiting(self.held)

    def _wait(self, future: Future | None, delay: float | None):
        until = time.monotonic() + delay if delay is not None else None
        if future is not None:
            future.add_done_callback(lambda _: self.held.changed.set())
        while True:
            if future is not None and future.done():
                return future.result()
            self.check()
            self.events.flush_due()
            # Until the next round if this thread takes them, else at the latest when check()
            # would find the deadline passed.
            step = inflight.poll_step(self.held)
            if step is None:
                step = self.seconds_left() + 1.01
            due = self.events.due_in()
            if due is not None:
                step = min(step, due)
            if until is not None:
                step = min(step, until - time.monotonic())
                if step <= 0:
                    return None
            self.held.changed.wait(max(step, 0))
            self.held.changed.clear()
            inflight.watch_if_due()

    def call_once(self, provider: str, model_id: str) -> Completion:
        remaining = self.seconds_left()
        if remaining <= 0:
            if self.call_counted:  # counted by the claim, but it will not happen
                self.call_counted = False
                run_count_call(self.run.pk, -1)
            raise _Stop("timeout")
        coroutine = ASYNC_RUNNERS.get(provider)
        self.call = Call(on_delta=self.events.delta)
        request = CompletionRequest(
            model=provider_model_id(provider, model_id),
            system=self.run.system_prompt,
            message=self.run.input["message"],
            max_tokens=self.run.max_tokens,
            timeout=remaining,
            call=self.call,
        )
        if self.call_counted:
            self.call_counted = False
        else:
            run_count_call(self.run.pk)
        self.future = aio.submit(coroutine(request)) if coroutine else _start_call(RUNNERS[provider], request)
        completion = self.wait(future=metrics.provider_timed(provider, self.future))
        if not self.call.streamed:  # a runner that does not stream: its text is one delta
            self.events.delta(completion.text)
        return completion

    def streamed(self) -> bool:
        return self.call is not None and self.call.streamed

    def stop_call(self) -> tuple[int, int] | None:
        """Close the call in flight (its connection closes at once) and return the usage the provider
        reported, as (input, output) tokens: what the stream had reported when it closed, or a whole
        answer that arrived meanwhile. A call that cannot be closed is waited for until its own
        timeout (the run's deadline), so its answer, if it comes, is billed."""
        call, future = self.call, self.future
        if call is None or future is None:
            return None
        call.close()
        try:
            with _slot_given_up():
                completion = future.result(timeout=max(self.seconds_left(), 0) + 2)
        except FutureTimeout:
            logger.warning("run %s: the provider call did not end after it was closed", self.run.pk)
        except BaseException:  # the call's own failure: what it reported is on `call`
            pass
        else:
            return completion.input_tokens, completion.output_tokens
        return call.reported()

    def forget_call(self):
        """A call that failed before any text went out bills nothing: forget it, so that a cancel or
        the deadline during the backoff or the switch to a fallback does not bill what it reported."""
        self.call = self.future = None

    def call_with_retries(self, provider: str, model_id: str) -> Completion:
        """Up to PROVIDER_MAX_ATTEMPTS calls with capped exponential backoff; raises the last error."""
        for attempt in range(settings.PROVIDER_MAX_ATTEMPTS):
            try:
                return self.call_once(provider, model_id)
            except ProviderError as error:
                if not error.retriable or attempt == settings.PROVIDER_MAX_ATTEMPTS - 1 or self.streamed():
                    raise
                backoff = settings.PROVIDER_BACKOFF_BASE_SECS * 2**attempt
                delay = min(settings.PROVIDER_BACKOFF_CAP_SECS, max(backoff, error.retry_after or 0))
                if delay >= self.seconds_left():
                    raise
                self.forget_call()
                logger.info(
                    "run %s: %s on attempt %d, retrying in %.2fs", self.run.pk, error.code, attempt + 1, delay
                )
                self.wait(delay=delay)
        raise AssertionError("unreachable")

    def finish(self, status, error=None, usage=None):
        _persist(lambda: run_finish(self.run.pk, status, error, token=self.token, usage=usage))

    def execute(self):
        rules = get_rules()
        tier = rules.tiers.get(self.run.tier)
        entry = rules.models.get(self.run.catalog_model)
        provider, model_id = self.run.provider, self.run.model
        while True:
            try:
                completion = self.call_with_retries(provider, model_id)
            except ProviderError as error:
                streamed = self.streamed()
                fallback = (
                    usable_fallback(rules, tier, entry, run_key_models(self.run))
                    if (error.retriable and tier and entry and not streamed)
                    else None
                )
                if fallback is None:
                    status = RunStatus.TIMED_OUT if error.code == "timeout" else RunStatus.FAILED
                    # A stream that broke after text went out is billed for what it had reported;
                    # a call that failed before (or reported nonsense) bills nothing, as ever.
                    usage = None
                    if streamed and self.call is not None and error.code != "invalid_provider_usage":
                        usage = self.call.reported()
                    self.finish(status, {"code": error.code, "message": error.message}, usage=usage)
                    return
                logger.info(
                    "run %s: %s out of retries (%s), falling back to %s",
                    self.run.pk,
                    model_id,
                    error.code,
                    fallback.id,
                )
                self.forget_call()
                # Billed at the fallback's multiplier, but never above the one the run was admitted
                # (and reserved) at, should an operator have raised the fallback's since.
                multiplier = min(fallback.multiplier, self.run.multiplier)
                if not run_switch_model(self.run.pk, self.token, fallback.id, fallback, multiplier):
                    state = run_holder_state(self.run.pk, self.token)  # canceled or taken over meanwhile
                    raise _Stop(state if state != "ok" else "lost")
                self.run.model, self.run.catalog_model, self.run.provider, self.run.multiplier = (
                    fallback.id,
                    fallback.id,
                    fallback.provider,
                    multiplier,
                )
                provider, model_id, entry = fallback.provider, fallback.id, fallback
                continue
            self.completion = completion
            self.complete()
            return

    def complete(self):
        completion = self.completion
        assert completion is not None  # only called once the provider has answered
        counters = _persist(lambda: run_complete(self.run, self.token, completion))
        if counters is not None:
            # Settled; its token alerts in a step of their own, a database outage waited out like
            # the settlement's (a worker dying in between leaves them to the redelivery, resume()).
            _persist(lambda: run_token_alerts_record(self.run, counters))
            return
        # Canceled meanwhile (billed for what the provider reported all the same), or no longer ours.
        _persist(lambda: run_record_completion(self.run.pk, self.token, completion))
        self.finish(RunStatus.COMPLETED)


def execute(run_id, timeout_secs=None) -> None:
    with _slots:
        _execute(run_id, timeout_secs)


def _execute(run_id, timeout_secs) -> None:
    claimed = run_claim(run_id, timeout_secs)
    if claimed is None:
        resume(run_id)
        return
    execution = Execution(*claimed)
    metrics.in_flight(+1)
    logs.bind(execution.run)
    ended = True  # whether this execution ended the run, and so writes its last events
    try:
        execution.events.status(execution.run)
        execution.execute()
    except _Stop as stop:
        if stop.reason == "lost":  # another claim or the sweeper owns the run now: nothing is ours
            ended = False
            if execution.call is not None:
                execution.call.close()
        else:
            usage = execution.stop_call()
            if stop.reason == "timeout":
                execution.finish(RunStatus.TIMED_OUT, timeout_error(execution.run), usage=usage)
            else:  # canceled: the status is final and its events went out with the cancel
                ended = False
                execution.events.drop()
                if usage is not None:
                    _persist(lambda: run_record_usage(run_id, execution.token, *usage))
                _persist(lambda: run_settle(run_id))
    except SoftTimeLimitExceeded:
        if execution.completion is not None:  # the provider answered: never throw that away
            execution.complete()
        else:
            execution.finish(RunStatus.TIMED_OUT, timeout_error(execution.run))
    except DATABASE_DOWN:
        raise  # before the provider answered: the task retries, and the claim is taken over then
    except Exception:
        logger.exception("run %s failed unexpectedly", run_id)
        execution.finish(RunStatus.FAILED, {"code": "internal", "message": "An internal error occurred."})
        raise
    finally:
        inflight.release(execution.run.pk)
        metrics.in_flight(-1)
        if ended:
            _end_events(execution)


def _end_events(execution: Execution) -> None:
    """The run's last events, from its row as this execution left it (unless canceled meanwhile,
    whose events the cancel wrote)."""
    run: Run | None = execution.run  # as run_complete left it, or else read again
    if run is None or not run.is_terminal:
        try:
            run = Run.objects.filter(pk=execution.run.pk).first()
        except DATABASE_DOWN:
            return
    if run is not None and run.is_terminal and run.status != RunStatus.CANCELED:
        execution.events.end(run)


def resume(run_id) -> None:
    """A delivery of a run it could not claim: a duplicate, a redelivery while its worker is alive,
    or a run that has ended. Finish only what is safe without calling the provider: a recorded
    answer whose worker is gone, an unsettled terminal run, or a completed run's token alerts."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("run %s does not exist; nothing to do", run_id)
    elif run.status == RunStatus.EXECUTING and run.input_tokens is not None and is_stale(run):
        run_finish(run.pk, RunStatus.COMPLETED)
        events.publish_end(run.pk)
    elif run.is_terminal and run.settled_at is None and run.status != RunStatus.CANCELED:
        run_settle(run.pk)
    elif run.status == RunStatus.COMPLETED and run.billed_tokens:
        run_token_alerts_catch_up(run)  # its worker may have died between its settlement and its alerts
