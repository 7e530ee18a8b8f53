"""Chaos: 200 runs over HTTP through gunicorn and two real worker processes, while one worker is
SIGKILLed (and restarted), Redis is stopped for a while and restarted (a broker outage that loses
every queued message: it keeps nothing on disk), a fifth of the runs are canceled at random moments,
and the provider emulators fail a fifth of their calls. Afterwards every run is terminal,
`manage.py billing_audit` finds nothing, and no run was billed twice. The figures are printed and
written to $MASCHINA_VAR_DIR/chaos.json. MASCHINA_CHAOS_RUNS runs a smaller (or larger) round, the
faults at the same shares of it."""

import json
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db.models import Sum

from billing.models import LedgerEntry
from runs.audit import audit
from runs.models import TERMINAL_STATUSES, Run

from .emulators import Reply, anthropic_error
from .processes import (
    Api,
    RedisServer,
    manage,
    stack_env,
    start_beat,
    start_gunicorn,
    start_worker,
    wait_http,
    wait_worker_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = int(os.environ.get("MASCHINA_CHAOS_RUNS") or 200)
CANCEL_SHARE = 0.2
MODELS = ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6", "ollama/llama3.2"]


def test_chaos(catalog, anthropic_emulator, ollama_emulator):
    anthropic_emulator.reset()
    ollama_emulator.reset()
    anthropic_emulator.fail_rate = ollama_emulator.fail_rate = 0.2
    anthropic_emulator.fail_reply = anthropic_error(529, "overloaded_error")
    ollama_emulator.fail_reply = Reply(status=503, body={"error": "busy"})
    anthropic_emulator.delay = ollama_emulator.delay = 0.05

    broker = RedisServer()
    env = stack_env(
        broker_url=broker.url,
        anthropic=anthropic_emulator,
        ollama=ollama_emulator,
        MASCHINA_HEARTBEAT_STALE_SECS="3",
        MASCHINA_SWEEP_INTERVAL_SECS="1",
        MASCHINA_SWEEP_REDISPATCH_AFTER_SECS="3",
    )
    log_dir = tempfile.mkdtemp(prefix="maschina-chaos-logs-")
    users = {}
    for tier in ["m10", "m10", "teams"]:
        name = f"chaos-{tier}-{len(users)}"
        manage(
            env,
            "set_tier",
            name,
            tier,
            "--requests-per-minute",
            "unlimited",
            "--max-concurrent-runs",
            "unlimited",
        )
        users[name] = manage(env, "create_api_key", name).strip().splitlines()[-1]

    web, url = start_gunicorn(env, log_dir, workers=2)
    workers = {name: start_worker(env, log_dir, name=name, concurrency=2) for name in ("alpha", "beta")}
    beat = start_beat(env, log_dir)
    everything = [web, beat, *workers.values()]
    try:
        wait_http(url + "/healthz", everything)
        for worker in workers.values():
            wait_worker_ready(worker)
        clients = [Api(url, key) for key in users.values()]
        agents = [c.post("/api/v1/agents", {"name": "chaos"}).json()["id"] for c in clients]

        posted, statuses, run_ids, lock = [0], Counter(), [], threading.Lock()
        cancels, rng = Counter(), random.Random(18)
        to_cancel = {i: rng.uniform(0, 0.4) for i in rng.sample(range(RUNS), int(RUNS * CANCEL_SHARE))}

        def post(i):
            client, agent = clients[i % len(clients)], agents[i % len(agents)]
            time.sleep(0.1)  # spread the posts out, so the faults land in the middle of the traffic
            response = client.post(
                f"/api/v1/agents/{agent}/run",
                {"input": {"message": f"chaos {i}"}, "model": MODELS[i % len(MODELS)]},
            )
            with lock:
                posted[0] += 1
                statuses[response.status_code] += 1
                if response.status_code == 202:
                    run_ids.append(response.json()["id"])
            if response.status_code == 202 and i in to_cancel:  # queued or executing by then, or done
                time.sleep(to_cancel[i])
                canceled = client.post(f"/api/v1/runs/{response.json()['id']}/cancel")
                with lock:
                    cancels[canceled.status_code] += 1

        events = []

        def when_posted(count):
            while posted[0] < count:
                time.sleep(0.01)

        def at(share):  # the moment a share of the runs has been posted
            when_posted(int(RUNS * share))

        def inject_faults():
            at(0.2)
            os.killpg(workers["alpha"].proc.pid, signal.SIGKILL)
            events.append(("worker alpha SIGKILLed", posted[0]))
            at(0.35)
            workers["alpha"] = start_worker(env, log_dir, name="alpha2", concurrency=2)
            everything.append(workers["alpha"])
            events.append(("worker alpha restarted", posted[0]))
            at(0.55)
            broker.stop()
            events.append(("redis stopped", posted[0]))
            time.sleep(2)
            at(0.65)
            broker.start()
            events.append(("redis started (empty)", posted[0]))

        started = time.monotonic()
        injector = threading.Thread(target=inject_faults)
        injector.start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, range(RUNS)))
        posted_secs = time.monotonic() - started
        injector.join(30)

        deadline = time.monotonic() + 240
        while Run.objects.exclude(status__in=TERMINAL_STATUSES).exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        drain_secs = time.monotonic() - started
        active = list(Run.objects.exclude(status__in=TERMINAL_STATUSES).values_list("id", "status", "claims"))
        assert active == [], f"runs not terminal after {drain_secs:.0f}s: {active[:10]}"

        assert statuses == {202: RUNS}, statuses  # never a 5xx, even with the broker down
        assert set(cancels) <= {200, 409} and sum(cancels.values()) == len(to_cancel), cancels
        runs = Run.objects.filter(pk__in=run_ids)
        assert runs.count() == RUNS
        summary, problems = audit()
        assert problems == [], problems
        ledger = LedgerEntry.objects.filter(run__in=runs)
        assert (
            ledger.count()
            == ledger.values("run").distinct().count()
            == runs.filter(billed_tokens__isnull=False).count()
        )
        outcome = Counter(runs.values_list("status", flat=True))
        errors = Counter(code for code in runs.values_list("error__code", flat=True) if code)
        assert set(outcome) <= {"completed", "failed", "canceled"}, outcome
        assert outcome["canceled"] == cancels[200], (outcome, cancels)
        assert set(errors) <= {"provider_unavailable", "canceled"}, errors
        assert manage(env, "billing_audit").strip().endswith("billing audit OK")
        logs = "".join(process.tail(100_000) for process in everything)
        assert "IntegrityError" not in logs

        figures = {
            "runs": RUNS,
            "events": events,
            "statuses": dict(outcome),
            "cancel_answers": dict(cancels),
            "failed_codes": dict(errors),
            "runs_claimed_more_than_once": runs.filter(claims__gt=1).count(),
            "extra_claims": sum(c - 1 for c in runs.values_list("claims", flat=True) if c > 1),
            "provider_calls": len(anthropic_emulator.calls) + len(ollama_emulator.calls),
            "provider_calls_recorded_on_runs": runs.aggregate(n=Sum("provider_calls"))["n"],
            "ledger_rows": ledger.count(),
            "billed_tokens": ledger.aggregate(n=Sum("billed_tokens"))["n"],
            "seconds_to_post": round(posted_secs, 1),
            "seconds_to_drain": round(drain_secs, 1),
        }
        print("\nchaos figures:", json.dumps(figures, indent=1))
        Path(os.environ.get("MASCHINA_VAR_DIR", tempfile.gettempdir()), "chaos.json").write_text(
            json.dumps(figures, indent=1)
        )
    finally:
        for process in everything:
            process.stop()
        broker.stop()
