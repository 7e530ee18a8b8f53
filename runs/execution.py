"""Executing one run: claim it, call its provider with our retries and the model's fallbacks, store
what the provider reported, finish and settle.

A claimed run is a coroutine on the process's provider loop (providers.aio) until it ends: waiting on
its provider, a backoff or a cancel, it holds no thread, so one worker process holds a thousand runs
in flight. Its database work, and its events, are handed to a few work threads (RUN_WORK_SLOTS),
which give their connection back after each step. A worker's task returns once the run is claimed
(start()), so the broker's message is acknowledged then: from there on the run's row keeps it, and
the sweeper takes over a run whose worker died (its heartbeat, a round of runs.inflight, goes stale).
execute() runs one to its end instead, its database work on the calling thread (a task called
directly, as the tests do), so the run sees what the caller's transaction sees.

The call streams its text to the run's events (runs.events). A call that is stopped (a cancel, the
deadline) is closed, which closes its connection, and the run is billed for what the provider had
reported by then, or for the whole answer of a call that cannot be closed, once it comes. A call
that fails after text went out is not retried or continued on a fallback: the client has seen that
text (CONTRACT section 9)."""

import asyncio
import contextvars
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from celery.exceptions import Reject
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

# Inboxes of the provider-call threads that are free, for the runners that are not coroutines. A
# thread serves one call at a time and frees itself when the call returns; a call abandoned on a
# cancel or the deadline keeps its thread until its own timeout (the run's deadline), so it never
# holds up the next run's call, which takes another free thread or starts one.
_free_threads: queue.SimpleQueue[_Inbox] = queue.SimpleQueue()


def _start_call(runner: _Runner, request: CompletionRequest) -> Future:
    """Run the provider call on a thread of its own, so the run can notice a cancel while it waits."""
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
        except BaseException as exc:  # handed to the waiting run, which re-raises it
            future.set_exception(exc)
        del runner, request, future  # nothing of a finished call outlives it
        _free_threads.put(inbox)


# Work slots of this process's runs (settings.RUN_WORK_SLOTS): the threads doing the runs' database
# work at once, besides the work threads (claims on delivery threads, runs executed in-process). More
# add no throughput, the GIL running one thread at a time, but every fragment of a provider's answer
# then waits behind all of them.
_slots = threading.BoundedSemaphore(settings.RUN_WORK_SLOTS)
_lock = threading.Lock()
_pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}  # name: (pid, pool); a forked child makes its own
_capacity: threading.BoundedSemaphore | None = None  # set by the worker's pool: runs are then detached
_watching: int | None = None  # the pid whose loop prompts the rounds of runs.inflight
_detached: set[asyncio.Task] = set()  # the runs start() left on the loop
_in_hand = 0  # runs between a delivery's start() and their end
_draining = False  # a warm shutdown: no more deliveries are taken


def _pool(name: str, threads: int) -> ThreadPoolExecutor:
    made = _pools.get(name)
    if made is None or made[0] != os.getpid():
        with _lock:
            made = _pools.get(name)
            if made is None or made[0] != os.getpid():
                made = _pools[name] = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix=name))
    return made[1]


def _work() -> ThreadPoolExecutor:
    return _pool("run-work", settings.RUN_WORK_SLOTS)


def warm_up() -> None:
    """Start the provider loop and every work thread, each with its database connection (given back
    to the pool where there is one)."""
    aio.loop()
    started = threading.Barrier(settings.RUN_WORK_SLOTS)  # each thread holds one, so all of them start
    steps = [_work().submit(_step, _connect, started) for _ in range(settings.RUN_WORK_SLOTS)]
    for step in steps:
        try:
            step.result()
        except (OperationalError, InterfaceError, threading.BrokenBarrierError) as exc:
            logger.warning("warming up: %s (the runs connect later)", exc.__class__.__name__)


def _connect(started: threading.Barrier) -> None:
    started.wait(timeout=5)
    connection.ensure_connection()


def set_capacity(runs: int) -> None:
    """How many runs this process holds at once (the worker's concurrency; runs.worker_pool). Only a
    worker on that pool detaches its runs (detaches()): it is the one that drains them when it stops."""
    global _capacity
    _capacity = threading.BoundedSemaphore(runs)


def detaches() -> bool:
    return _capacity is not None


def _step(fn: Callable[..., Any], *args) -> Any:
    """One step of a run's database work, on a work thread; its connection goes back afterwards."""
    try:
        return fn(*args)
    except DATABASE_DOWN:
        connection.close()
        raise
    finally:
        release_connection()


class _CallerThread(Executor):
    """The database work of a run executed in-process, done on the thread that waits for it; that
    thread takes the rounds of runs.inflight meanwhile."""

    def __init__(self):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        self.inbox.put((functools.partial(fn, *args, **kwargs), future))
        return future

    def serve(self, until: Future) -> None:
        until.add_done_callback(lambda _: self.inbox.put(None))
        while True:
            try:
                item = self.inbox.get(timeout=settings.CANCEL_POLL_SECS)
            except queue.Empty:
                inflight.watch_if_due()
                continue
            if item is None:
                until.result()  # re-raises what ended the run
                return
            step, future = item
            with _slots:
                try:
                    future.set_result(step())
                except BaseException as exc:  # handed to the run's coroutine, which re-raises it
                    future.set_exception(exc)
            inflight.watch_if_due()


def _prompt_rounds(loop: asyncio.AbstractEventLoop) -> None:
    """On the loop, every CANCEL_POLL_SECS: a thread of its own takes the round when this process holds
    runs (not a work thread, where it would wait behind the runs' own work)."""
    if _watching != os.getpid():
        return
    loop.call_later(settings.CANCEL_POLL_SECS, _prompt_rounds, loop)
    if inflight.held_count():
        _pool("runs-rounds", 1).submit(inflight.watch_if_due, prompted=True).add_done_callback(_round_failed)


def _round_failed(done: Future) -> None:
    error = done.exception()
    if error is not None:
        logger.error("runs watch: the round failed", exc_info=error)


def _keep_watching() -> None:
    global _watching
    if _watching != os.getpid():
        with _lock:
            if _watching != os.getpid():
                _watching = os.getpid()  # before the first prompt, which stops if it is not set
                loop = aio.loop()
                loop.call_soon_threadsafe(_prompt_rounds, loop)


def _retrieved(future: asyncio.Future) -> None:
    """A provider call's outcome counts as seen (a run that stopped waiting on it does not read it)."""
    if not future.cancelled():
        future.exception()


class _Stop(Exception):
    """The run was canceled, taken over, or reached its deadline while we waited."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason  # canceled | lost | timeout


class Execution:
    def __init__(self, run: Run, token, call_counted: bool = False, work: Executor | None = None):
        self.run, self.token = run, token
        self.call_counted = call_counted  # the claim already counted the next provider call
        self.work = work or _work()
        self.deadline = run_deadline(run)
        self.completion: Completion | None = None  # the provider's answer, once there is one
        self.loop = aio.loop()
        self.woken = False  # whatever the run waits for may have happened
        self.waiter: asyncio.Future | None = None  # what sleep() awaits
        self.call: Call | None = None  # the provider call in flight, or the last one
        self.future: asyncio.Future | None = None
        self.events_ended = False  # its last events written (settle())
        # Made where the run was claimed, with the claim's database work: its `executing` status (written
        # with its first fragment) and the rules it runs under, rather than in steps of their own.
        self.events = events.Writer(run, wake=self.wake)
        self.events.status(run)
        self.rules = get_rules()
        # Last, so that nothing after it can fail: released when the run ends; the rounds wake it once
        # past its deadline, check()'s slack included.
        self.held = inflight.hold(run.pk, token, wake=self.wake, deadline=self.deadline.timestamp() + 1)

    def wake(self) -> None:
        """From any thread."""
        self.loop.call_soon_threadsafe(self.wake_here)

    def wake_here(self, *_) -> None:
        """On the loop."""
        self.woken = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def db(self, fn: Callable[..., Any], *args) -> Any:
        """fn(*args) on a work thread (with this run's log context)."""
        context = contextvars.copy_context()
        return await asyncio.wrap_future(self.work.submit(context.run, _step, fn, *args))

    async def persist(self, fn: Callable[..., Any], *args) -> Any:
        """A database write that must not be lost: once the provider has answered, its answer only
        exists in this process, so a database outage is waited out (with capped backoff)."""
        delay = 0.25
        while True:
            try:
                return await self.db(fn, *args)
            except DATABASE_DOWN as exc:
                logger.warning("database unavailable (%s); retrying in %.2fs", exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.DB_RETRY_BACKOFF_CAP_SECS)

    def settle(self, completion: Completion) -> tuple | None:
        """The answer stored and billed (run_complete), then, in the same step, the token alerts and
        the run's last events. The user's counters, or None if the run was no longer this claim's;
        `events_ended` tells whether the alerts and the events were done too, which a database outage
        after the settlement leaves to the caller, to be waited out on their own."""
        counters = run_complete(self.run, self.token, completion)
        if counters is None:
            return None
        try:
            run_token_alerts_record(self.run, counters)
        except DATABASE_DOWN:
            connection.close()
            return counters
        _end_events(self)
        self.events_ended = True
        return counters

    def seconds_left(self) -> float:
        return (self.deadline - timezone.now()).total_seconds()

    def check(self):
        """Raise _Stop if the last round found the run canceled or taken over, or it is past its
        deadline (with a second of slack, so the provider client reports its own timeout first)."""
        if self.held.state != "ok":
            raise _Stop(self.held.state)
        if self.seconds_left() < -1:
            raise _Stop("timeout")

    async def sleep(self, seconds: float | None) -> None:
        """Until woken, or `seconds` have passed (None: until woken)."""
        if not self.woken:
            self.waiter = self.loop.create_future()
            timer = None if seconds is None else self.loop.call_later(max(seconds, 0), self.wake_here)
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()
        self.woken = False

    async def wait(self, future: asyncio.Future | None = None, delay: float | None = None):
        """Wait for `future` (or `delay` seconds), woken by the answer, by a fragment's events falling
        due, or by a round of runs.inflight that found the run canceled, taken over or past its
        deadline (a run waiting on its provider keeps no timer of its own)."""
        until = time.monotonic() + delay if delay is not None else None
        if future is not None:
            future.add_done_callback(self.wake_here)
        while True:
            if future is not None and future.done():
                return future.result()
            self.check()
            due = self.events.due_in()
            if due is not None and due <= 0:
                await self.db(self.events.flush)
                due = self.events.due_in()
            step = due
            if until is not None:
                left = until - time.monotonic()
                if left <= 0:
                    return None
                step = left if step is None else min(step, left)
            await self.sleep(step)

    async def call_once(self, provider: str, model_id: str) -> Completion:
        remaining = self.seconds_left()
        if remaining <= 0:
            if self.call_counted:  # counted by the claim, but it will not happen
                self.call_counted = False
                await self.db(run_count_call, self.run.pk, -1)
            raise _Stop("timeout")
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
            await self.db(run_count_call, self.run.pk)
        coroutine = ASYNC_RUNNERS.get(provider)
        if coroutine is not None:
            self.future = asyncio.ensure_future(coroutine(request))
        else:
            self.future = asyncio.wrap_future(_start_call(RUNNERS[provider], request))
        self.future.add_done_callback(_retrieved)
        metrics.provider_timed(provider, self.future)
        completion = await self.wait(future=self.future)
        if not self.call.streamed:  # a runner that does not stream: its text is one delta
            self.events.delta(completion.text)
        return completion

    def streamed(self) -> bool:
        return self.call is not None and self.call.streamed

    async def stop_call(self) -> tuple[int, int] | None:
        """Close the call in flight (its connection closes at once) and return the usage the provider
        reported, as (input, output) tokens: what the stream had reported when it closed, or a whole
        answer that arrived meanwhile. A call that cannot be closed is waited for until its own
        timeout (the run's deadline), so its answer, if it comes, is billed."""
        call, future = self.call, self.future
        if call is None or future is None:
            return None
        call.close()
        done, _ = await asyncio.wait({future}, timeout=max(self.seconds_left(), 0) + 2)
        if not done:
            logger.warning("run %s: the provider call did not end after it was closed", self.run.pk)
        elif not future.cancelled() and future.exception() is None:
            completion = future.result()
            return completion.input_tokens, completion.output_tokens
        return call.reported()  # the call's own failure, or none yet: what it reported is on `call`

    def forget_call(self):
        """A call that failed before any text went out bills nothing: forget it, so that a cancel or
        the deadline during the backoff or the switch to a fallback does not bill what it reported."""
        self.call = self.future = None

    async def call_with_retries(self, provider: str, model_id: str) -> Completion:
        """Up to PROVIDER_MAX_ATTEMPTS calls with capped exponential backoff; raises the last error."""
        for attempt in range(settings.PROVIDER_MAX_ATTEMPTS):
            try:
                return await self.call_once(provider, model_id)
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
                await self.wait(delay=delay)
        raise AssertionError("unreachable")

    async def finish(self, status, error=None, usage=None):
        await self.persist(run_finish, self.run.pk, status, error, self.token, usage)

    async def execute(self):
        rules = self.rules
        tier = rules.tiers.get(self.run.tier)
        entry = rules.models.get(self.run.catalog_model)
        provider, model_id = self.run.provider, self.run.model
        while True:
            try:
                completion = await self.call_with_retries(provider, model_id)
            except ProviderError as error:
                streamed = self.streamed()
                fallback = (
                    usable_fallback(rules, tier, entry, await self.db(run_key_models, self.run))
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
                    await self.finish(status, {"code": error.code, "message": error.message}, usage=usage)
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
                if not await self.db(
                    run_switch_model, self.run.pk, self.token, fallback.id, fallback, multiplier
                ):
                    state = await self.db(run_holder_state, self.run.pk, self.token)  # canceled or taken over
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
            await self.complete()
            return

    async def complete(self):
        completion = self.completion
        assert completion is not None  # only called once the provider has answered
        counters = await self.persist(self.settle, completion)
        if counters is not None:
            if not self.events_ended:
                # Settled, but the database went away before its token alerts: waited out like the
                # settlement (a worker dying meanwhile leaves them to the redelivery, resume()).
                await self.persist(run_token_alerts_record, self.run, counters)
            return
        # Canceled meanwhile (billed for what the provider reported all the same), or no longer ours.
        await self.persist(run_record_completion, self.run.pk, self.token, completion)
        await self.finish(RunStatus.COMPLETED)

    async def run_to_end(self) -> None:
        """The claimed run, to its end. A database outage before the provider answered ends it here,
        unfinished: its heartbeat stops, and the sweeper or a redelivery's claim takes it over."""
        metrics.in_flight(+1)
        logs.bind(self.run)
        ended = True  # whether this execution ended the run, and so writes its last events
        try:
            await self.execute()
        except _Stop as stop:
            if stop.reason == "lost":  # another claim or the sweeper owns the run now: nothing is ours
                ended = False
                if self.call is not None:
                    self.call.close()
            else:
                usage = await self.stop_call()
                if stop.reason == "timeout":
                    await self.finish(RunStatus.TIMED_OUT, timeout_error(self.run), usage=usage)
                else:  # canceled: the status is final and its events went out with the cancel
                    ended = False
                    self.events.drop()
                    if usage is not None:
                        await self.persist(run_record_usage, self.run.pk, self.token, *usage)
                    await self.persist(run_settle, self.run.pk)
        except DATABASE_DOWN:
            ended = False
            if self.call is not None:
                self.call.close()
            raise
        except Exception:  # re-raised to whoever runs it, who logs it (a worker's task, or _run_detached)
            await self.finish(
                RunStatus.FAILED, {"code": "internal", "message": "An internal error occurred."}
            )
            raise
        finally:
            inflight.release(self.run.pk)
            metrics.in_flight(-1)
            if ended and not self.events_ended:
                await self.db(_end_events, self)


def start(run_id, timeout_secs=None) -> None:
    """A worker's delivery: claim the run and leave it on the provider loop, holding no thread; returns
    once it is claimed, or found not claimable (resume()). Waits while this process holds as many
    runs as its capacity; a delivery taken while the worker stops goes back to the queue."""
    global _in_hand
    capacity = _capacity
    assert capacity is not None, "only a worker on runs.worker_pool detaches its runs"
    capacity.acquire()
    with _lock:
        if _draining:
            capacity.release()
            raise Reject("the worker is stopping", requeue=True)
        _in_hand += 1
    detached = False
    try:
        with _slots:  # on this thread, which would only wait while a work thread did it
            execution = _step(_claim_execution, run_id, timeout_secs)
        if execution is not None:
            _keep_watching()
            try:
                execution.loop.call_soon_threadsafe(_detach, execution, capacity)
            except BaseException:
                inflight.release(execution.run.pk)  # its heartbeat stops: the sweeper takes it over
                raise
            detached = True
    finally:
        if not detached:
            _let_go(capacity)


def _let_go(capacity: threading.BoundedSemaphore) -> None:
    global _in_hand
    with _lock:
        _in_hand -= 1
    capacity.release()


def _detach(execution: Execution, capacity: threading.BoundedSemaphore) -> None:
    """On the loop: the run's task, kept until it ends (the loop keeps only weak references)."""
    task = execution.loop.create_task(_run_detached(execution, capacity))
    _detached.add(task)
    task.add_done_callback(_detached.discard)


async def _run_detached(execution: Execution, capacity: threading.BoundedSemaphore) -> None:
    try:
        await execution.run_to_end()
    except DATABASE_DOWN:
        logger.warning("run %s: database unavailable; left to the sweeper", execution.run.pk)
    except Exception:  # nothing else waits for this task: its error is told here
        logger.exception("run %s failed unexpectedly", execution.run.pk)
    finally:
        _let_go(capacity)


def drain() -> None:
    """Take no more deliveries, and wait for the runs start() took to end (a worker's warm shutdown:
    their messages were acknowledged, and the sweeper would otherwise call their providers again once
    their heartbeats went stale)."""
    global _draining
    with _lock:
        _draining = True
    if _in_hand:
        logger.info("waiting for %d run(s) in flight to end", _in_hand)
    while _in_hand:
        time.sleep(0.1)


def execute(run_id, timeout_secs=None) -> None:
    """Claim and execute the run to its end, its database work on this thread."""
    work = _CallerThread()
    with _slots:
        claimed = _claim(run_id, timeout_secs)
        if claimed is None:
            return
        run, token, call_counted = claimed
        execution = Execution(run, token, call_counted, work)
    work.serve(until=aio.submit(execution.run_to_end()))


def _claim(run_id, timeout_secs):
    """The run's claim as (run, token, call counted), or None after finishing what is safe (resume())."""
    claimed = run_claim(run_id, timeout_secs)
    if claimed is None:
        resume(run_id)
    return claimed


def _claim_execution(run_id, timeout_secs) -> Execution | None:
    """The claimed run's execution, made in the claim's step. If making it fails, the run is not
    held, so its heartbeat stops and the sweeper takes it over."""
    claimed = _claim(run_id, timeout_secs)
    return None if claimed is None else Execution(*claimed)


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
