"""Benchmark 7: runs completed per second at a realistic provider latency, ours vs the LiteLLM proxy.

The benchmark emulator answers every call after BENCH_EMULATOR_DELAY_SECS (2 s). Ours: gunicorn (2
workers) and one `celery -A maschina worker` with no option (the project's threads pool and
concurrency); wrk admits runs from 400 concurrent clients for a fixed time (about 4 000 runs here), and
the clock stops when the last of them is settled: completed runs / (first admission -> last settlement).
Sampled meanwhile: runs executing at once, the worker's PostgreSQL connections, and the worker's
RSS, whose growth over its idle size divided by the runs in flight is the memory per run.
A node starts runs at the rate its CPU allows (one core: the GIL), so at 2 s a call it never holds
more than that rate times 2 s. What one node can hold at once is measured first, on a backlog and a
longer call: the node's consumer is paused, BACKLOG runs are admitted, and the node is let loose on
them with the emulator answering after BACKLOG_DELAY_SECS.
Peer: the LiteLLM proxy of benchmark 6, the same emulator and delay, wrk at 400 clients; each 200 is a
call that went through the provider, so its calls/s is completions per second.
`--web uvicorn` serves the admissions from uvicorn (2 workers, maschina.asgi) instead of gunicorn.

    python bench/in_flight.py [--quick] [--web gunicorn|uvicorn]
"""

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from gateways import PEER_BODY, PEER_KEY, RUN_BODY, LiteLLM

WORKER_APP = "maschina-bench-node"  # the worker's application_name in pg_stat_activity
BACKLOG = 1200  # runs queued before the node consumes: more than its concurrency of 1 000
BACKLOG_DELAY_SECS = 20.0  # long enough for the node to start 1 000 before the first one ends


class Sampler:
    """Every 0.2 s: runs executing, the worker's connections, the worker's RSS; the peaks."""

    def __init__(self, worker_pids):
        from django.db import connections

        self.worker_pids, self.connections = worker_pids, connections
        self.peak = {"executing": 0, "connections": 0, "rss_kib": 0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        from runs.models import Run

        with self.connections["default"].cursor() as cursor:
            while not self.done.wait(0.2):
                executing = Run.objects.filter(status="executing").count()
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [WORKER_APP]
                )
                (conns,) = cursor.fetchone()
                figures = {
                    "executing": executing,
                    "connections": conns,
                    "rss_kib": common.rss_kib(self.worker_pids()),
                }
                for name, value in figures.items():
                    self.peak[name] = max(self.peak[name], value)
        self.connections["default"].close()

    def stop(self) -> dict:
        self.done.set()
        self.thread.join(5)
        return self.peak


def start_node(env, logs, paused=False):
    """One `celery -A maschina worker` with no option, once it answers (its consumer paused if asked);
    returns it, its pids and its idle RSS (KiB)."""
    from maschina.celery import app

    worker = common.start_worker({**env, "PGAPPNAME": WORKER_APP}, logs, concurrency=None)
    try:
        common.wait_worker_ready(worker)
        if paused:
            app.control.cancel_consumer("maschina", reply=True, timeout=5)
    except BaseException:
        worker.stop()
        raise
    time.sleep(1)
    # A threads worker forks nothing: its pids are read once, as walking its thousand threads'
    # entries under /proc at every sample cost the benchmark process a share of a core.
    pids = common.descendants(worker.proc.pid)
    return worker, lambda: pids, common.rss_kib(pids)


def held_figures(peak: dict, idle_rss: int) -> dict:
    """A Sampler's peaks as results: runs in flight, connections, and RSS per in-flight run."""
    return {
        "peak_in_flight": peak["executing"],
        "peak_db_connections": peak["connections"],
        "idle_rss_mib": round(idle_rss / 1024, 1),
        "peak_rss_mib": round(peak["rss_kib"] / 1024, 1),
        "rss_kib_per_in_flight_run": round((peak["rss_kib"] - idle_rss) / max(peak["executing"], 1), 1),
    }


def wait_settled(Run, timeout=600):
    deadline = time.monotonic() + timeout
    while Run.objects.filter(settled_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("runs not settled in time")
        time.sleep(0.1)


def backlog_phase(env, logs, url, key, agent, clients) -> dict:
    """One node let loose on BACKLOG queued runs: the runs it holds in flight at once, its connections,
    its memory per in-flight run over its idle size, and how fast it drains them."""
    from django.db.models import Max, Min

    from maschina.celery import app
    from runs.models import Run

    worker, pids, idle_rss = start_node(env, logs, paused=True)
    try:
        while Run.objects.count() < BACKLOG:
            common.wrk(
                f"{url}/api/v1/agents/{agent.pk}/run", key=key, body=RUN_BODY,
                connections=clients, seconds=2, timeout="60s",
            )  # fmt: skip
        sampler = Sampler(pids)
        started = time.monotonic()
        app.control.add_consumer("maschina", reply=True, timeout=5)
        wait_settled(Run)
        drain = time.monotonic() - started
        peak = sampler.stop()
        span = Run.objects.aggregate(first=Min("started_at"), last=Max("settled_at"))
    finally:
        worker.stop()
    completed = Run.objects.filter(status="completed").count()
    result = {
        "delay_secs": BACKLOG_DELAY_SECS,
        "runs": Run.objects.count(),
        "completed": completed,
        "drain_seconds": round(drain, 2),
        "first_start_to_last_settlement_seconds": round((span["last"] - span["first"]).total_seconds(), 2),
        **held_figures(peak, idle_rss),
    }
    print(f"  backlog: {result}")
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--web", choices=("gunicorn", "uvicorn"), default="gunicorn")
    args = parser.parse_args()
    admit_secs, peer_secs = (3, 6) if args.quick else (15, 20)

    logs = common.log_dir("in-flight")
    redis = common.Redis()
    emulator = common.Emulator(logs, delay_secs=args.delay)
    backlog_emulator = common.Emulator(logs, delay_secs=BACKLOG_DELAY_SECS)
    web = worker = peer = None
    try:
        common.recreate_database()
        common.django_setup(redis.url(0))
        made = common.migrate_and_seed()
        _, key, agent = made["bench"]
        from django.db.models import Max, Min
        from django.utils import timezone

        from runs.models import Run

        env = common.stack_env(broker_url=redis.url(0), anthropic_url=backlog_emulator.url)
        web, url = common.start_web(env, logs, workers=2, server=args.web)
        backlog = backlog_phase(env, logs, url, key, agent, args.clients)
        env = common.stack_env(broker_url=redis.url(0), anthropic_url=emulator.url)
        worker, worker_pids, idle_rss = start_node(env, logs)

        # Ours: admit for `admit_secs`, then wait for the last settlement.
        meter = common.CpuMeter(
            {
                "web": lambda: common.descendants(web.proc.pid),
                "worker": worker_pids,
                "postgres (our backends)": common.pg_backend_pids,
                "redis": lambda: [redis.pid],
            }
        )
        sampler = Sampler(worker_pids)
        profiler = common.Profiler("worker-in-flight", worker_pids())  # with BENCH_PROFILE only
        since = timezone.now()
        meter.start()
        admission = common.wrk(
            f"{url}/api/v1/agents/{agent.pk}/run", key=key, body=RUN_BODY,
            connections=args.clients, seconds=admit_secs, timeout="60s",
        )  # fmt: skip
        wait_settled(Run)
        cpu = meter.stop()
        profiler.stop()
        peak = sampler.stop()
        runs = Run.objects.filter(created_at__gte=since)
        span = runs.aggregate(first=Min("created_at"), last=Max("settled_at"))
        n = runs.count()
        completed = runs.filter(status="completed").count()
        wall = (span["last"] - span["first"]).total_seconds()
        ours = {
            "admitted": n,
            "completed": completed,
            "seconds": round(wall, 2),
            "per_second": round(completed / wall, 1),
            "admission": {k: admission[k] for k in ("rps", "p50_ms", "p99_ms", "statuses", "socket_errors")},
            **held_figures(peak, idle_rss),
            "cpu_ms_per_run": common.per_op_ms(cpu, completed),
        }
        print(f"  maschina: {ours}")
        worker.stop()
        web.stop()
        worker = web = None

        peer = LiteLLM(logs, emulator.url, redis.url(13))
        common.wrk(peer.url + "/v1/chat/completions", key=PEER_KEY, body=PEER_BODY, connections=8, seconds=2)
        meter = common.CpuMeter({"litellm": lambda: common.descendants(peer.proc.pid)})
        meter.start()
        load = common.wrk(
            peer.url + "/v1/chat/completions", key=PEER_KEY, body=PEER_BODY,
            connections=args.clients, seconds=peer_secs, timeout="60s",
        )  # fmt: skip
        cpu = meter.stop()
        theirs = {
            "calls": load["ok"],
            "seconds": load["seconds"],
            "per_second": load["rps"],
            "p50_ms": load["p50_ms"],
            "p99_ms": load["p99_ms"],
            "statuses": load["statuses"],
            "cpu_ms_per_call": common.per_op_ms(cpu, load["ok"]),
        }
        print(f"  litellm: {theirs}")
        ratio = round(ours["per_second"] / theirs["per_second"], 2)
        result = {
            "what": f"completed runs per second at a provider latency of {args.delay} s, "
            f"{args.clients} concurrent clients, one worker node",
            "baseline": f"LiteLLM proxy {peer.version()} (2 workers), same emulator, delay and clients",
            "delay_secs": args.delay,
            "clients": args.clients,
            "maschina": ours,
            "litellm": theirs,
            "ratio": ratio,
            "backlog": backlog,
            "target": "ratio >= 2.5, >= 1000 in flight, <= 20 connections, <= 64 KiB per in-flight run",
            "target_met": ratio >= 2.5
            and backlog["peak_in_flight"] >= 1000
            and max(ours["peak_db_connections"], backlog["peak_db_connections"]) <= 20
            and backlog["rss_kib_per_in_flight_run"] <= 64,
        }
        print(
            f"in flight: maschina {ours['per_second']}/s vs litellm {theirs['per_second']}/s, ratio {ratio}"
        )
        common.save_result("in_flight", result)
    finally:
        for process in (peer, worker, web):
            if process:
                process.stop()
        emulator.stop()
        backlog_emulator.stop()
        redis.stop()


if __name__ == "__main__":
    main()
