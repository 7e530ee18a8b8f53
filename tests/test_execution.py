"""Executing runs in this process (the task body, not Celery's eager mode) against the emulators:
billing per multiplier, idempotency, retries and fallbacks, failures, timeouts, cancel, sweeper."""

import datetime as dt
import ssl
import subprocess
import threading
import time
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import LedgerEntry, ModelUsage, UsagePeriod
from billing.selectors import plan_for
from providers import anthropic as anthropic_runner
from routing.models import CatalogModel, RuleEffect, TierModelRule
from runs import sweeper
from runs.admission import run_create
from runs.dispatch import redispatch_delay
from runs.models import Run, RunStatus
from runs.services import run_cancel
from runs.tasks import execute_run

from .emulators import AnthropicEmulator, Reply, anthropic_error

# The emulators' default usage: Anthropic 20 input + 5 cache writes + 7 cache reads, 30 output;
# Ollama 12 prompt, 8 eval.
ANTHROPIC_RAW = (32, 30)
OLLAMA_RAW = (12, 8)


@pytest.fixture
def start_run(make_user, make_agent, providers):
    def start(tier="m10", model=None, message="hello", timeout_secs=60, max_tokens=100, user=None):
        user = user or make_user(tier)
        agent = make_agent(user)
        return run_create(
            user=user,
            plan=plan_for(user),
            agent=agent,
            input={"message": message},
            model=model,
            timeout_secs=timeout_secs,
            max_tokens=max_tokens,
        )

    return start


def execute_and_close(run_id):
    """A delivery on its own thread, which must give its database connection back."""
    from django.db import connection

    try:
        execute_run(run_id)
    finally:
        connection.close()


def start_in_flight(run, emulator) -> threading.Thread:
    """Execute the run on another thread and return once its provider call is in flight."""
    worker = threading.Thread(target=execute_and_close, args=(str(run.pk),))
    worker.start()
    deadline = time.monotonic() + 5
    while not emulator.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emulator.calls, "the provider was never called"
    return worker


def usage_row(run):
    return UsagePeriod.objects.get(user=run.user, period=run.period)


def assert_settled(run, billed):
    run.refresh_from_db()
    assert run.settled_at is not None
    assert run.billed_tokens == billed
    row = usage_row(run)
    assert row.tokens_reserved == 0
    assert row.tokens_used == (billed or 0)
    assert LedgerEntry.objects.filter(run=run).count() == (0 if billed is None else 1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model, raw, multiplier, billed",
    [
        ("claude-haiku-4-5", ANTHROPIC_RAW, "1", 62),
        ("claude-sonnet-4-6", ANTHROPIC_RAW, "3", 186),
        ("claude-opus-4-6", ANTHROPIC_RAW, "15", 930),
        ("ollama/llama3.2", OLLAMA_RAW, "0", 0),
        ("ollama/qwen2.5:7b", OLLAMA_RAW, "0", 0),
    ],
)
def test_completed_run_is_billed_at_its_multiplier(start_run, providers, model, raw, multiplier, billed):
    run = start_run(model=model)
    assert run.reserved_tokens > 0 or multiplier == "0"
    assert usage_row(run).tokens_reserved == run.reserved_tokens
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert (run.input_tokens, run.output_tokens) == raw
    assert run.multiplier == Decimal(multiplier)
    assert run.output["text"].endswith("hello")
    assert run.started_at <= run.finished_at
    assert_settled(run, billed)
    entry = LedgerEntry.objects.get(run=run)
    assert (entry.model, entry.input_tokens, entry.output_tokens, entry.billed_tokens) == (
        model,
        *raw,
        billed,
    )
    assert (entry.user_id, entry.period, entry.multiplier, entry.created_at) == (
        run.user_id,
        run.period,
        run.multiplier,
        run.settled_at,
    )
    by_model = ModelUsage.objects.get(user=run.user, period=run.period, model=model)
    assert (by_model.runs, by_model.input_tokens, by_model.output_tokens, by_model.billed_tokens) == (
        1,
        *raw,
        billed,
    )
    if model.startswith("ollama/"):
        assert providers[1].calls[-1][1]["model"] == model.removeprefix("ollama/")


@pytest.mark.django_db
def test_a_settlement_whose_update_matches_nothing_writes_nothing(start_run, providers):
    from billing.settlement import counters_of
    from providers import Completion
    from runs.services import run_complete, run_settle

    run = start_run(model="claude-sonnet-4-6")
    before = usage_row(run)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED, input_tokens=10, output_tokens=10)
    # The run is completed, not executing: the UPDATE that expects it executing matches no row.
    assert run_complete(run, run.claim, Completion(text="late", input_tokens=10, output_tokens=10)) is None
    run.refresh_from_db()
    assert (run.settled_at, run.billed_tokens) == (None, None)
    assert (usage_row(run).tokens_used, usage_row(run).tokens_reserved) == (
        before.tokens_used,
        before.tokens_reserved,
    )
    assert (
        not LedgerEntry.objects.filter(run=run).exists()
        and not ModelUsage.objects.filter(user=run.user).exists()
    )
    assert run_settle(run.pk)
    assert counters_of(run.user_id, run.period) == (60, "m10", None)  # the counters, for the token alerts
    assert_settled(run, 60)
    assert ModelUsage.objects.get(user=run.user).billed_tokens == 60


@pytest.mark.django_db
def test_fractional_multiplier_rounds_up(start_run, providers):
    CatalogModel.objects.filter(id="claude-haiku-4-5-20251001").update(multiplier=Decimal("0.5"))
    providers[0].default_usage = {
        "input_tokens": 30,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    run = start_run(model="claude-haiku-4-5-20251001")
    execute_run(str(run.pk))
    assert_settled(run, 17)  # ceil(33 x 0.5) = ceil(16.5)


@pytest.mark.django_db
def test_same_task_executed_twice_bills_once(start_run, providers):
    run = start_run(model="claude-sonnet-4-6")
    execute_run(str(run.pk))
    execute_run(str(run.pk))
    assert len(providers[0].calls) == 1
    assert_settled(run, 186)
    assert ModelUsage.objects.get(user=run.user, model="claude-sonnet-4-6").runs == 1


@pytest.mark.django_db
def test_redelivery_after_provider_answered_settles_without_calling_again(start_run, providers):
    run = start_run(model="claude-haiku-4-5")
    # As if a worker died after storing the provider's answer and before finishing.
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.EXECUTING, started_at=timezone.now(), input_tokens=10, output_tokens=5
    )
    execute_run(str(run.pk))
    assert providers[0].calls == []
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert_settled(run, 15)


@pytest.mark.django_db
def test_retriable_errors_are_retried_then_succeed(start_run, providers):
    anthropic = providers[0]
    anthropic.queue(
        "claude-haiku-4-5", anthropic_error(429, "rate_limit_error"), anthropic_error(529, "overloaded_error")
    )
    run = start_run(model="claude-haiku-4-5")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert len(anthropic.calls) == 3
    assert run.provider_calls == 3
    assert_settled(run, 62)


@pytest.mark.django_db
def test_out_of_retries_falls_back_along_the_chain_billed_at_the_fallback(start_run, providers):
    anthropic = providers[0]
    anthropic.queue("claude-opus-4-6", *[anthropic_error(529, "overloaded_error")] * 3)
    anthropic.queue("claude-sonnet-4-6", *[anthropic_error(500, "api_error")] * 3)
    run = start_run(model="claude-opus-4-6")
    opus_reservation = run.reserved_tokens
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert (run.requested_model, run.model, run.provider) == (
        "claude-opus-4-6",
        "claude-haiku-4-5",
        "anthropic",
    )
    assert [c[1]["model"] for c in anthropic.calls] == ["claude-opus-4-6"] * 3 + ["claude-sonnet-4-6"] * 3 + [
        "claude-haiku-4-5"
    ]
    assert run.multiplier == 1
    assert_settled(run, 62)
    assert opus_reservation >= 62
    assert list(ModelUsage.objects.filter(user=run.user).values_list("model", flat=True)) == [
        "claude-haiku-4-5"
    ]


@pytest.mark.django_db
def test_no_fallback_the_tier_may_not_use(start_run, providers):
    TierModelRule.objects.create(tier_id="m10", model_id="claude-sonnet-4-6", effect=RuleEffect.DENY)
    providers[0].queue("claude-opus-4-6", *[anthropic_error(529, "overloaded_error")] * 3)
    run = start_run(model="claude-opus-4-6")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error["code"] == "provider_unavailable"
    assert len(providers[0].calls) == 3
    assert_settled(run, None)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "reply, code",
    [
        (anthropic_error(400, "invalid_request_error"), "provider_bad_request"),
        (anthropic_error(401, "authentication_error"), "provider_auth"),
        (anthropic_error(404, "not_found_error"), "model_not_found"),
        (
            anthropic_error(429, "rate_limit_error", error_code="enforced_spend_limit_reached"),
            "provider_spend_limit",
        ),
        (Reply(usage={"output_tokens": -4}), "invalid_provider_usage"),
    ],
)
def test_non_retriable_errors_fail_after_one_call_and_release(start_run, providers, reply, code):
    providers[0].queue("claude-sonnet-4-6", reply)
    run = start_run(model="claude-sonnet-4-6")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error["code"] == code
    assert run.output is None
    assert len(providers[0].calls) == 1
    assert_settled(run, None)


@pytest.mark.django_db
def test_ollama_model_not_found(start_run, providers):
    providers[1].queue("nosuch", Reply(status=404, body={"error": "model 'nosuch' not found"}))
    run = start_run(tier="access", model="ollama/nosuch")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.error["code"]) == (RunStatus.FAILED, "model_not_found")
    assert_settled(run, None)


@pytest.mark.django_db
def test_slow_provider_times_out(start_run, providers):
    providers[0].queue("claude-haiku-4-5", Reply(delay=3))
    run = start_run(model="claude-haiku-4-5", timeout_secs=1)
    started = time.monotonic()
    execute_run(str(run.pk))
    assert time.monotonic() - started < 2.8
    run.refresh_from_db()
    assert (run.status, run.error["code"]) == (RunStatus.TIMED_OUT, "timeout")
    assert_settled(run, None)


@pytest.mark.django_db
def test_retry_after_beyond_the_deadline_is_not_slept(start_run, providers):
    reply = anthropic_error(429, "rate_limit_error")
    reply.headers = {"retry-after": "3600"}
    providers[0].queue("claude-haiku-4-5", reply)
    run = start_run(tier="m1", model="claude-haiku-4-5", timeout_secs=5)
    started = time.monotonic()
    execute_run(str(run.pk))
    # The backoff is capped (PROVIDER_BACKOFF_CAP_SECS) and never outlives the run's deadline.
    assert time.monotonic() - started < 5
    run.refresh_from_db()
    assert run.status in (RunStatus.COMPLETED, RunStatus.FAILED)


@pytest.mark.django_db
def test_canceled_queued_run_never_starts(start_run, providers):
    run = start_run(model="claude-haiku-4-5")
    run_cancel(run=run)
    execute_run(str(run.pk))
    assert providers[0].calls == []
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert run.started_at is None
    assert_settled(run, None)


@pytest.mark.django_db(transaction=True)
def test_cancel_before_the_provider_answers_bills_what_its_late_answer_reported(start_run, providers):
    """The answer starts after the cancel: the worker reads what it reports first (message_start:
    the input, and 1 output token), closes the connection, and bills exactly that."""
    providers[0].queue("claude-haiku-4-5", Reply(delay=1.0, chunks=["x "] * 20, delta_delay=0.1))
    run = start_run(model="claude-haiku-4-5")
    worker = start_in_flight(run, providers[0])
    canceled = run_cancel(run=Run.objects.get(pk=run.pk))
    assert canceled.status == RunStatus.CANCELED  # the answer already says so
    worker.join(10)
    assert not worker.is_alive()
    run.refresh_from_db()
    assert (run.status, run.output, run.error["code"]) == (RunStatus.CANCELED, None, "canceled")
    assert (run.input_tokens, run.output_tokens) == (32, 1)
    assert_settled(run, 33)  # haiku is 1x
    time.sleep(0.5)  # the emulator notices the closed connection when it next writes
    [(model, sent)] = providers[0].disconnects
    assert model == "claude-haiku-4-5" and sent < 20


def _threads_inside(path_part: str) -> int:
    """How many threads are running code of a file whose path contains `path_part` just now."""
    import sys

    count = 0
    for frame in sys._current_frames().values():
        while frame is not None and path_part not in frame.f_code.co_filename:
            frame = frame.f_back
        count += frame is not None
    return count


@pytest.mark.django_db(transaction=True)
def test_runs_waiting_on_anthropic_hold_no_thread_inside_the_call(start_run, providers):
    """The calls are coroutines on the provider loop: with twenty runs waiting on their answers, no
    thread is inside the Anthropic runner (a thread per call would be twenty), and each run still
    completes and is billed once."""
    runs = [start_run(model="claude-haiku-4-5") for _ in range(20)]
    providers[0].queue("claude-haiku-4-5", *[Reply(delay=1.5) for _ in runs])
    deliveries = [threading.Thread(target=execute_and_close, args=(str(run.pk),)) for run in runs]
    for delivery in deliveries:
        delivery.start()
    deadline = time.monotonic() + 10
    while providers[0].in_flight < len(runs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert providers[0].in_flight == len(runs)
    assert _threads_inside("providers/anthropic.py") == 0
    for delivery in deliveries:
        delivery.join(20)
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.COMPLETED
        assert_settled(run, 62)


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_call_that_cannot_be_closed_bills_its_answer(start_run, providers):
    """Ollama's call is not a stream: its answer after the cancel is billed exactly as reported."""
    providers[1].queue("llama3.2", Reply(delay=1.0, usage={"prompt_eval_count": 40, "eval_count": 9}))
    run = start_run(model="ollama/llama3.2")
    worker = start_in_flight(run, providers[1])
    run_cancel(run=Run.objects.get(pk=run.pk))
    worker.join(10)
    run.refresh_from_db()
    assert (run.status, run.output) == (RunStatus.CANCELED, None)
    assert (run.input_tokens, run.output_tokens) == (40, 9)
    assert_settled(run, 0)  # at 0x, but on the record


@pytest.mark.django_db(transaction=True)
def test_cancel_mid_stream_closes_the_connection_and_bills_what_was_reported(start_run, providers):
    providers[0].queue("claude-sonnet-4-6", Reply(chunks=["word "] * 100, delta_delay=0.05))
    run = start_run(model="claude-sonnet-4-6")
    worker = start_in_flight(run, providers[0])
    deadline = time.monotonic() + 5
    while len(providers[0].deltas) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    run_cancel(run=Run.objects.get(pk=run.pk))
    canceled_at = time.monotonic()
    worker.join(10)
    assert time.monotonic() - canceled_at < 1.0  # closed within a second
    time.sleep(0.3)
    [(model, sent)] = providers[0].disconnects
    assert model == "claude-sonnet-4-6" and 3 <= sent < 100
    run.refresh_from_db()
    assert (run.status, run.output) == (RunStatus.CANCELED, None)
    assert (run.input_tokens, run.output_tokens) == (32, 1)  # message_start's; no message_delta came
    assert_settled(run, 99)  # (32 + 1) x 3


@pytest.fixture(scope="module")
def tls_certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (certificate file, key file)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = (
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        ["openssl", *request.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


@pytest.fixture
def tls_provider(providers, settings, monkeypatch, tls_certificate):
    """An Anthropic emulator on HTTPS, trusted through SSL_CERT_FILE as a deployment behind its own
    CA would be; the runner's clients and TLS context made anew for it, and closed after."""
    cert, key = tls_certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    emulator = AnthropicEmulator("anthropic-tls", tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setattr(anthropic_runner, "_clients", {})
    monkeypatch.setattr(anthropic_runner, "_tls", [])
    settings.ANTHROPIC_BASE_URL = emulator.url
    try:
        yield emulator
    finally:
        try:
            anthropic_runner._close_clients()  # this fixture's clients, as the process's at exit
        finally:
            emulator.close()


@pytest.mark.django_db
def test_a_run_completes_over_https(start_run, tls_provider):
    run = start_run(model="claude-haiku-4-5", message="over tls")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"text": "echo: over tls"})
    assert tls_provider.calls_for("claude-haiku-4-5")


@pytest.mark.django_db(transaction=True)
def test_cancel_mid_stream_over_tls_drops_the_connection_at_once(start_run, tls_provider):
    """A TLS connection closed politely waits for the provider's own close (up to 30 s) while the
    provider may go on generating: a cancel drops it, so the provider's next write fails."""
    tls_provider.queue("claude-sonnet-4-6", Reply(chunks=["word "] * 100, delta_delay=0.05))
    run = start_run(model="claude-sonnet-4-6")
    worker = start_in_flight(run, tls_provider)
    deadline = time.monotonic() + 5
    while len(tls_provider.deltas) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    run_cancel(run=Run.objects.get(pk=run.pk))
    canceled_at = time.monotonic()
    worker.join(10)
    while not tls_provider.disconnects and time.monotonic() - canceled_at < 3:
        time.sleep(0.01)
    assert time.monotonic() - canceled_at < 1.0  # the provider saw the connection go within a second
    [(model, sent)] = tls_provider.disconnects
    assert model == "claude-sonnet-4-6" and 3 <= sent < 40
    run.refresh_from_db()
    assert (run.status, run.input_tokens, run.output_tokens) == (RunStatus.CANCELED, 32, 1)
    assert_settled(run, 99)  # (32 + 1) x 3


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_silent_stream_settles_at_once_billed_what_it_reported(start_run, providers):
    """The stream has sent message_start and then nothing: closing the call shuts its socket down,
    so the worker's blocked read ends at once rather than when the next fragment comes."""
    providers[0].queue("claude-haiku-4-5", Reply(chunks=["late "] * 2, delta_delay=8))
    run = start_run(model="claude-haiku-4-5")
    worker = start_in_flight(run, providers[0])
    time.sleep(0.5)  # message_start has arrived; the first fragment is 8 s away
    run_cancel(run=Run.objects.get(pk=run.pk))
    canceled_at = time.monotonic()
    worker.join(10)
    assert time.monotonic() - canceled_at < 1.5  # the cancel poll, the shutdown, the settlement
    run.refresh_from_db()
    assert (run.status, run.output) == (RunStatus.CANCELED, None)
    assert (run.input_tokens, run.output_tokens) == (32, 1)  # message_start's
    assert_settled(run, 33)


@pytest.mark.django_db
def test_a_stream_that_breaks_after_text_went_out_fails_without_retry_billed_as_reported(
    start_run, providers
):
    providers[0].queue("claude-sonnet-4-6", Reply(chunks=["a ", "b ", "c "], fail_after=2, fail_mode="drop"))
    run = start_run(model="claude-sonnet-4-6")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.error["code"]) == (RunStatus.FAILED, "provider_unavailable")
    assert len(providers[0].calls) == 1  # neither retried nor continued on the fallback
    assert (run.input_tokens, run.output_tokens, run.output) == (32, 1, None)
    assert_settled(run, 99)


@pytest.mark.django_db
def test_a_cancel_just_before_the_workers_own_end_still_bills_what_was_reported(
    start_run, providers, monkeypatch
):
    from runs import execution

    providers[0].queue("claude-sonnet-4-6", Reply(chunks=["a ", "b ", "c "], fail_after=2, fail_mode="drop"))
    run = start_run(model="claude-sonnet-4-6")
    finish = execution.run_finish

    def canceled_first(run_id, *args, **kwargs):  # the user's cancel commits first
        run_cancel(run=Run.objects.get(pk=run_id))
        return finish(run_id, *args, **kwargs)

    monkeypatch.setattr(execution, "run_finish", canceled_first)
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert (run.input_tokens, run.output_tokens) == (32, 1)  # what the broken stream had reported
    assert_settled(run, 99)


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_between_the_settlement_and_its_alerts_leaves_them_to_a_step_of_their_own(
    start_run, providers, monkeypatch
):
    from django.db import OperationalError

    from runs import events, execution

    record = execution.run_token_alerts_record
    calls = []

    def down_once(*args):  # the settlement has committed; then the database goes away for a moment
        calls.append(args)
        if len(calls) == 1:
            raise OperationalError("the server closed the connection")
        return record(*args)

    monkeypatch.setattr(execution, "run_token_alerts_record", down_once)
    run = start_run(model="claude-haiku-4-5")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert len(calls) == 2  # waited out on their own, not by settling again
    assert_settled(run, 62)
    assert LedgerEntry.objects.filter(run=run).count() == 1
    assert len(providers[0].calls) == 1
    names = [fields[b"e"] for _, fields in events.log().client.xrange(events.stream_key(run.pk))]
    assert names[-2:] == [b"status", b"done"] and names.count(b"done") == 1


@pytest.mark.django_db(transaction=True)
def test_a_cancel_during_the_backoff_does_not_bill_the_failed_attempt(start_run, providers, settings):
    settings.PROVIDER_BACKOFF_BASE_SECS = 3
    providers[0].queue("claude-haiku-4-5", Reply(fail_after=0))  # message_start, then it fails
    run = start_run(model="claude-haiku-4-5")
    worker = start_in_flight(run, providers[0])
    time.sleep(0.7)  # the attempt failed; the worker waits out its backoff
    run_cancel(run=Run.objects.get(pk=run.pk))
    worker.join(10)
    assert not worker.is_alive() and len(providers[0].calls) == 1
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert_settled(run, None)  # as the same failed attempt is when no cancel comes


@pytest.mark.django_db
def test_a_stream_that_fails_before_its_first_delta_is_retried(start_run, providers):
    providers[0].queue("claude-haiku-4-5", Reply(fail_after=0), Reply(fail_after=0, fail_mode="drop"))
    run = start_run(model="claude-haiku-4-5")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.error
    assert len(providers[0].calls) == 3
    assert run.output == {"text": "echo: hello"}
    assert_settled(run, 62)


@pytest.mark.django_db
def test_sweeper_redispatches_queued_and_reaps_stuck_runs(start_run, providers, monkeypatch):
    dispatched = []
    monkeypatch.setattr(
        sweeper,
        "dispatch_run",
        lambda run_id, timeout, dispatches=0, priority=0: dispatched.append(run_id) or True,
    )
    never_dispatched = start_run(model="claude-haiku-4-5")  # its publish failed at admission:
    Run.objects.filter(pk=never_dispatched.pk).update(
        created_at=timezone.now() - dt.timedelta(seconds=10),
        dispatched_at=None,
        dispatches=0,
        redispatch_at=None,
    )
    fresh = start_run(model="claude-haiku-4-5")
    # Admission records its publish in the INSERT: not again before the redispatch delay.
    assert fresh.dispatches == 1 and fresh.redispatch_at - fresh.dispatched_at == redispatch_delay(1)
    Run.objects.filter(pk=fresh.pk).update(created_at=timezone.now() - dt.timedelta(seconds=10))
    stuck = start_run(model="claude-haiku-4-5", timeout_secs=30)
    long_ago = timezone.now() - dt.timedelta(seconds=30 + 60)
    Run.objects.filter(pk=stuck.pk).update(status=RunStatus.EXECUTING, started_at=long_ago)
    answered = start_run(model="claude-haiku-4-5", timeout_secs=30)
    Run.objects.filter(pk=answered.pk).update(
        status=RunStatus.EXECUTING, started_at=long_ago, input_tokens=4, output_tokens=6
    )

    result = sweeper.sweep()

    assert dispatched == [never_dispatched.pk]
    assert fresh.pk not in dispatched
    assert result == {
        "redispatched": 1,
        "taken_over": 0,
        "reaped": 2,
        "settled": 0,
        "alerts_requeued": 0,
        "events_purged": 0,
    }
    stuck.refresh_from_db()
    assert (stuck.status, stuck.error["code"]) == (RunStatus.TIMED_OUT, "timeout")
    assert_settled(stuck, None)
    answered.refresh_from_db()
    assert answered.status == RunStatus.COMPLETED
    assert answered.billed_tokens == 10


@pytest.mark.django_db
def test_a_run_whose_worker_died_before_the_answer_is_taken_over(start_run, providers):
    run = start_run(model="claude-haiku-4-5")
    dead_since = timezone.now() - dt.timedelta(seconds=120)
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.EXECUTING, started_at=timezone.now(), heartbeat_at=dead_since, claims=1
    )
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.claims) == (RunStatus.COMPLETED, 2)
    assert len(providers[0].calls) == 1
    assert_settled(run, 62)


@pytest.mark.django_db
def test_a_delivery_while_the_worker_is_alive_does_nothing(start_run, providers):
    run = start_run(model="claude-haiku-4-5")
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.EXECUTING, started_at=timezone.now(), heartbeat_at=timezone.now(), claims=1
    )
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.claims, run.settled_at) == (RunStatus.EXECUTING, 1, None)
    assert providers[0].calls == []


@pytest.mark.django_db
def test_sweeper_redispatches_an_orphan_once_per_stale_window(start_run, providers, monkeypatch):
    dispatched = []
    monkeypatch.setattr(
        sweeper,
        "dispatch_run",
        lambda run_id, timeout, dispatches=0, priority=0: dispatched.append((run_id, timeout)) or True,
    )
    run = start_run(model="claude-haiku-4-5", timeout_secs=600)
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.EXECUTING,
        dispatched_at=now - dt.timedelta(seconds=100),  # published at admission
        started_at=now - dt.timedelta(seconds=100),
        heartbeat_at=now - dt.timedelta(seconds=90),
    )
    assert sweeper.sweep()["taken_over"] == 1
    assert dispatched[0][0] == run.pk and 490 <= dispatched[0][1] <= 500  # the time the run has left
    Run.objects.filter(pk=run.pk).update(dispatched_at=timezone.now())
    assert sweeper.sweep()["taken_over"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_lost_its_claim_writes_nothing(start_run, providers):
    import uuid

    providers[0].queue("claude-haiku-4-5", Reply(delay=1.0))
    run = start_run(model="claude-haiku-4-5")
    worker = start_in_flight(run, providers[0])
    Run.objects.filter(pk=run.pk).update(claim=uuid.uuid4())  # another worker took it over
    worker.join(10)
    time.sleep(1.2)
    run.refresh_from_db()
    assert run.status == RunStatus.EXECUTING
    assert (run.input_tokens, run.output, run.settled_at) == (None, None, None)
    assert not LedgerEntry.objects.filter(run=run).exists()


@pytest.mark.django_db
def test_529_on_every_attempt_without_fallback_fails_after_bounded_calls(start_run, providers, settings):
    from .emulators import anthropic_error as error

    providers[0].queue("claude-haiku-4-5", *[error(529, "overloaded_error")] * 10)
    run = start_run(tier="m1", model="claude-haiku-4-5")
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.error["code"]) == (RunStatus.FAILED, "provider_unavailable")
    assert len(providers[0].calls) == settings.PROVIDER_MAX_ATTEMPTS == 3
    assert_settled(run, None)


@pytest.mark.django_db
def test_ollama_that_never_answers_ends_timed_out_at_the_deadline(start_run, providers, settings):
    from runs.dispatch import task_time_limits

    from .emulators import SilentServer

    silent = SilentServer()
    settings.OLLAMA_BASE_URL = silent.url
    try:
        run = start_run(tier="access", model="ollama/llama3.2", timeout_secs=2)
        started = time.monotonic()
        execute_run(str(run.pk))
        elapsed = time.monotonic() - started
        soft, _ = task_time_limits(run.timeout_secs)
        assert elapsed < run.timeout_secs + 1.5 < soft
        run.refresh_from_db()
        assert (run.status, run.error["code"]) == (RunStatus.TIMED_OUT, "timeout")
        assert_settled(run, None)
    finally:
        silent.close()


@pytest.mark.django_db
def test_a_queued_backlog_is_redispatched_with_backoff(start_run, providers, monkeypatch, settings):
    from runs.dispatch import redispatch_delay

    settings.SWEEP_REDISPATCH_AFTER_SECS = 30
    assert [redispatch_delay(n).total_seconds() for n in (1, 2, 3, 7, 8, 50)] == [
        30,
        60,
        120,
        1920,
        1920,
        1920,
    ]
    dispatched = []
    monkeypatch.setattr(
        sweeper,
        "dispatch_run",
        lambda run_id, timeout, dispatches=0, priority=0: dispatched.append(dispatches) or True,
    )
    run = start_run(model="claude-haiku-4-5")
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(
        dispatches=3,
        dispatched_at=now - dt.timedelta(seconds=100),
        redispatch_at=now + dt.timedelta(seconds=20),
    )
    sweeper.sweep(now)
    assert dispatched == []
    Run.objects.filter(pk=run.pk).update(redispatch_at=now - dt.timedelta(seconds=1))
    sweeper.sweep(now)
    assert dispatched == [3]


@pytest.mark.django_db
def test_a_failing_broker_stops_the_sweeps_publishing_but_not_its_reaping(start_run, providers, monkeypatch):
    calls = []
    monkeypatch.setattr(
        sweeper,
        "dispatch_run",
        lambda run_id, timeout, dispatches=0, priority=0: calls.append(run_id) and False,
    )
    queued = [start_run(model="claude-haiku-4-5") for _ in range(3)]
    Run.objects.filter(pk__in=[r.pk for r in queued]).update(  # their publish failed at admission
        created_at=timezone.now() - dt.timedelta(seconds=10),
        dispatched_at=None,
        dispatches=0,
        redispatch_at=None,
    )
    stuck = start_run(model="claude-haiku-4-5", timeout_secs=10)
    long_ago = timezone.now() - dt.timedelta(seconds=200)
    Run.objects.filter(pk=stuck.pk).update(
        status=RunStatus.EXECUTING, started_at=long_ago, deadline_at=long_ago, heartbeat_at=timezone.now()
    )
    counts = sweeper.sweep()
    assert len(calls) == 1  # the first failed publish ends this sweep's publishing
    assert counts["reaped"] == 1 and counts["redispatched"] == 0
    stuck.refresh_from_db()
    assert stuck.status == RunStatus.TIMED_OUT


@pytest.mark.django_db
def test_a_takeover_keeps_the_first_deadline(start_run, providers):
    run = start_run(model="claude-haiku-4-5", timeout_secs=100)
    first_start = timezone.now() - dt.timedelta(seconds=60)
    deadline = first_start + dt.timedelta(seconds=100)
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.EXECUTING,
        started_at=first_start,
        deadline_at=deadline,
        heartbeat_at=first_start,
        claims=1,
    )
    execute_run(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.claims, run.deadline_at, run.started_at) == (
        RunStatus.COMPLETED,
        2,
        deadline,
        first_start,
    )
    sent_timeout = float(providers[0].calls[0][2]["x-stainless-timeout"])
    assert 30 < sent_timeout <= 40  # the time left of the first deadline, not a fresh 100 s


@pytest.mark.django_db
def test_a_run_renders_as_drfs_field_by_field_rendering_would(start_run, providers):
    from rest_framework import serializers

    from runs.serializers import RunSerializer

    queued = start_run(model="claude-haiku-4-5")
    completed = start_run(model="claude-sonnet-4-5")
    execute_run(str(completed.pk))
    failed = start_run(model="claude-haiku-4-5")
    providers[0].queue("claude-haiku-4-5", anthropic_error(400, "invalid_request_error", "bad"))
    execute_run(str(failed.pk))
    canceled = run_cancel(run=start_run(model="claude-haiku-4-5"))
    canceled.agent.delete()
    for run in Run.objects.filter(pk__in=[queued.pk, completed.pk, failed.pk, canceled.pk]):
        fast = RunSerializer(run).data
        generic = serializers.Serializer.to_representation(RunSerializer(run), run)
        assert list(fast.items()) == list(generic.items())
    statuses = {
        run.status for run in Run.objects.filter(pk__in=[queued.pk, completed.pk, failed.pk, canceled.pk])
    }
    assert statuses == {"queued", "completed", "failed", "canceled"}


@pytest.mark.django_db
def test_a_message_with_the_runs_timeout_claims_it_in_one_statement(start_run, providers):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from runs.services import run_claim

    run = start_run(model="claude-haiku-4-5", timeout_secs=45)
    with CaptureQueriesContext(connection) as queries:
        claimed, token, counted = run_claim(str(run.pk), 45)
    assert len(queries) == 1 and counted
    stored = Run.objects.get(pk=run.pk)
    loaded = {f.attname: getattr(claimed, f.attname) for f in Run._meta.concrete_fields}
    assert loaded == {f.attname: getattr(stored, f.attname) for f in Run._meta.concrete_fields}
    assert (stored.status, stored.claim, stored.claims, stored.provider_calls) == (
        RunStatus.EXECUTING,
        token,
        1,
        1,
    )
    assert stored.deadline_at - stored.started_at == dt.timedelta(seconds=45)
    assert run_claim(str(run.pk), 45) is None  # a second delivery: executing, its worker alive


@pytest.mark.django_db
def test_a_wrong_timeout_in_the_message_falls_back_to_reading_the_run(start_run, providers):
    run = start_run(model="claude-haiku-4-5", timeout_secs=45)
    execute_run(str(run.pk), timeout_secs=44)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.deadline_at - run.started_at == dt.timedelta(seconds=45)
    assert_settled(run, 62)
    canceled = run_cancel(run=start_run(model="claude-haiku-4-5", timeout_secs=45))
    execute_run(str(canceled.pk), timeout_secs=45)  # not queued any more: nothing to claim
    canceled.refresh_from_db()
    assert (canceled.status, canceled.claims, canceled.started_at) == (RunStatus.CANCELED, 0, None)
    assert len(providers[0].calls) == 1


def test_an_abandoned_provider_call_never_holds_up_the_next_and_threads_are_reused():
    from runs.execution import _start_call

    release = threading.Event()
    stuck = _start_call(lambda request: release.wait(10) and "late", None)  # e.g. its run was canceled
    assert (
        _start_call(lambda request: ("next", threading.current_thread()), None).result(timeout=2)[0] == "next"
    )
    release.set()
    assert stuck.result(timeout=2) == "late"
    time.sleep(0.05)  # both threads are free again
    threads = {
        _start_call(lambda request: threading.current_thread(), None).result(timeout=2) for _ in range(20)
    }
    assert len(threads) <= 2  # kept, not one per call
    failing = _start_call(lambda request: 1 / 0, None)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=2)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("way", ["executed in-process", "delivered to a worker"])
def test_at_most_the_work_slots_of_runs_do_their_own_work_at_once(way, monkeypatch, settings):
    """Runs racing through their own work (here the claim, held open a while) take turns by
    RUN_WORK_SLOTS; more at once would only make every provider thread wait longer for the GIL. A
    worker's deliveries claim on their own threads, by the same slots."""
    import uuid

    from runs import execution

    deliver = execution.execute
    if way == "delivered to a worker":
        monkeypatch.setattr(execution, "_capacity", threading.BoundedSemaphore(16))
        monkeypatch.setattr(execution, "_draining", False)
        deliver = execution.start

    from .concurrency import race

    inside, most, lock = [0], [0], threading.Lock()

    def slow_claim(run_id, timeout_secs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return None  # not claimable: the delivery is looked at and dropped (no such run)

    monkeypatch.setattr(execution, "run_claim", slow_claim)
    outcomes = race(16, lambda: deliver(uuid.uuid4()))
    assert outcomes == [None] * 16
    assert most[0] == settings.RUN_WORK_SLOTS  # never more, and the slots are all used


def test_a_worker_keeps_what_it_loaded_out_of_the_collectors_full_passes():
    import gc

    from maschina.celery import _freeze_what_is_loaded

    try:
        _freeze_what_is_loaded()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_delivery_taken_while_the_worker_stops_goes_back_to_the_queue(monkeypatch):
    """Once a warm shutdown has begun draining the runs in hand, a delivery is not claimed: it is
    rejected back to the queue for another node, and holds no capacity."""
    import uuid

    from celery.exceptions import Reject

    from runs import execution

    capacity = threading.BoundedSemaphore(1)
    monkeypatch.setattr(execution, "_capacity", capacity)
    monkeypatch.setattr(execution, "_draining", False)
    execution.drain()  # nothing in hand: returns at once, and takes no more
    claims = []
    monkeypatch.setattr(execution, "run_claim", lambda *args: claims.append(args))
    with pytest.raises(Reject) as rejected:
        execution.start(uuid.uuid4())
    assert rejected.value.requeue and claims == []
    assert capacity.acquire(blocking=False)  # given back
