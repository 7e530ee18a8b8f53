"""Benchmark 4: completed runs per second through one real worker (`celery worker -c 2`, prefork)
against the zero-latency Anthropic emulator.

Baseline, in the same run: a no-op task (benchapp.noop) on the same worker, same settings (acks_late,
prefetch 1, the same queue). For each, the worker is started and ready, its consumer is paused while
N messages are published (N queued runs admitted through agents.services.run_create, or N no-op
tasks), then resumed; the clock runs from the resume until the last run is settled (or the queue and
its unacked set are empty for the no-op). Reported: per second, the ratio (target >= 0.5), and the
CPU each run costs in the worker (its parent and its children apart), PostgreSQL (our backends), Redis
and the emulator.

A breakdown, in the same run: the same admitted runs through benchapp.run_without_provider, their
claim and settlement without the provider call. Its ratio is the most any provider call, however
cheap, would leave benchmark 4.

    python bench/worker_throughput.py [--quick]
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

QUEUE = "maschina"
# kombu's Redis transport keeps a queue's messages in one list per priority step (runs.dispatch).
QUEUE_LISTS = [QUEUE] + [f"{QUEUE}\x06\x16{step}" for step in (3, 6, 9)]
MESSAGE = "Summarize: the quick brown fox."


def drain(app, redis_client, done, meter, timeout):
    """Resume consuming and wait until done(); returns (seconds, cpu)."""
    meter.start()
    started = time.monotonic()
    app.control.add_consumer(QUEUE, reply=True, timeout=5, limit=1)
    deadline = started + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not finish in time")
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    return elapsed, meter.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (300, 1) if args.quick else (2000, 2)

    logs = common.log_dir("worker")
    redis = common.Redis()
    emulator = common.Emulator(logs)
    worker = None
    try:
        common.recreate_database()
        common.django_setup(redis.url(0))
        made = common.migrate_and_seed()
        user, _, agent = made["bench"]
        import redis as redis_lib

        from bench.benchapp.tasks import noop, run_without_provider
        from billing.selectors import plan_for
        from maschina.celery import app
        from providers import Completion
        from runs.admission import run_create
        from runs.models import Run
        from tests.emulators import anthropic_message

        # The breakdown's constant answer: the emulator's, as the runner reads it (input + cache tokens).
        message = anthropic_message({"messages": [{"role": "user", "content": MESSAGE}]})
        usage = message["usage"]
        answer = dataclasses.asdict(
            Completion(
                text=message["content"][0]["text"],
                input_tokens=usage["input_tokens"]
                + usage["cache_creation_input_tokens"]
                + usage["cache_read_input_tokens"],
                output_tokens=usage["output_tokens"],
            )
        )

        client = redis_lib.Redis.from_url(redis.url(0))
        env = common.stack_env(broker_url=redis.url(0), anthropic_url=emulator.url)
        worker = common.start_worker(env, logs, concurrency=2)
        common.wait_worker_ready(worker)
        groups = {
            # Apart: the parent (Celery's consumer: receives, hands to a child, acks) bounds the no-op.
            "worker parent": lambda: [worker.proc.pid],
            "worker children": lambda: common.descendants(worker.proc.pid)[1:],
            "postgres (our backends)": common.pg_backend_pids,
            "redis": lambda: [redis.pid],
            "emulator": lambda: [emulator.pid],
        }
        plan = plan_for(user)

        def queue_empty():
            return not any(client.llen(key) for key in QUEUE_LISTS) and client.hlen("unacked") == 0

        def publish_noops():
            for i in range(n):
                noop.apply_async(args=[i])

        def admit_runs():
            for _ in range(n):
                run_create(
                    user=user,
                    plan=plan,
                    agent=agent,
                    input={"message": MESSAGE},
                    model=None,
                    timeout_secs=300,
                    max_tokens=16,
                )

        def runs_done():
            return not Run.objects.filter(settled_at__isnull=True).exists()

        def admit_runs_without_provider():
            # Admitted as always (their execute_run messages wait in the paused queue), then their
            # messages are replaced by the breakdown's task.
            admit_runs()
            client.delete(*QUEUE_LISTS)
            for run_id, timeout_secs in Run.objects.filter(status="queued").values_list("id", "timeout_secs"):
                run_without_provider.apply_async(args=[str(run_id), timeout_secs, answer])

        phases = (
            ("noop", publish_noops, queue_empty),
            ("runs", admit_runs, runs_done),
            ("runs_without_provider", admit_runs_without_provider, runs_done),
        )

        def load(name, publish, done, profile=True):
            """Publish with the consumer paused (the worker holds nothing yet), then time the drain."""
            app.control.cancel_consumer(QUEUE, reply=True, timeout=5, limit=1)
            time.sleep(0.3)
            publish()
            profiler = (
                common.Profiler(f"worker-{name}", common.descendants(worker.proc.pid)) if profile else None
            )
            seconds, cpu = drain(app, client, done, common.CpuMeter(groups), timeout=600)
            if profiler:
                profiler.stop()
            return seconds, cpu

        # Warm-up, not counted: the pool's processes import the runners, open connections, build the snapshot.
        for name, publish, done in phases:
            load(name, publish, done, profile=False)

        figures = {name: [] for name, _, _ in phases}
        for _ in range(rounds):
            for name, publish, done in phases:
                seconds, cpu = load(name, publish, done)
                figures[name].append({"n": n, "seconds": seconds, "cpu": cpu})
                print(
                    f"  {name}: {n} in {seconds:.2f} s = {n / seconds:.1f}/s, "
                    f"cpu/op {common.per_op_ms(cpu, n)}"
                )

        statuses = dict(
            Run.objects.values_list("status")
            .order_by()
            .annotate(n=__import__("django.db.models", fromlist=["Count"]).Count("id"))
        )
        if set(statuses) != {"completed"}:  # a failed run settles too, and would count as a fast one
            raise RuntimeError(f"not every run completed: {statuses}")
        summary = {}
        for name, items in figures.items():
            total_n = sum(i["n"] for i in items)
            total_s = sum(i["seconds"] for i in items)
            cpu = {g: sum(i["cpu"][g] for i in items) for g in items[0]["cpu"]}
            summary[name] = {
                "per_second": round(total_n / total_s, 1),
                "ops": total_n,
                "seconds": round(total_s, 2),
                "cpu_ms_per_op": common.per_op_ms(cpu, total_n),
            }
        ratio = round(summary["runs"]["per_second"] / summary["noop"]["per_second"], 3)
        ceiling = round(summary["runs_without_provider"]["per_second"] / summary["noop"]["per_second"], 3)
        print(
            f"worker: {summary['runs']['per_second']} runs/s "
            f"vs {summary['noop']['per_second']} no-op tasks/s, "
            f"ratio {ratio}; run statuses {statuses}"
        )
        print(
            f"  without the provider call: {summary['runs_without_provider']['per_second']} runs/s, "
            f"ratio {ceiling}"
        )
        result = {
            "what": "completed, settled runs per second through one worker (-c 2) "
            "against a zero-latency emulator",
            "baseline": "a no-op Celery task on the same worker and settings",
            "runs": summary["runs"],
            "noop": summary["noop"],
            "ratio": ratio,
            "runs_without_provider": summary["runs_without_provider"],
            "ratio_without_provider": ceiling,
            "run_statuses": statuses,
            "target": "ratio >= 0.5",
            "target_met": ratio >= 0.5,
        }
        common.save_result("worker_throughput", result)
    finally:
        if worker:
            worker.stop()
        emulator.stop()
        redis.stop()


if __name__ == "__main__":
    main()
