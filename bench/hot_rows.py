"""A diagnostic, not one of the numbered benchmarks: PostgreSQL's CPU per run when one user's runs are
admitted and settled from several threads at once, as benchmark 6's load does, without the web tier,
the worker or the provider around it.

Each thread admits a run (runs.admission.run_create, the one admission statement), claims it and
completes it (the one settlement statement), over and over, for the same user and key. Every run
updates the same few counter rows, so this shows what each such row costs under concurrency, which a
single thread does not: one row more per admission and settlement cost about 0.13 ms of PostgreSQL's
CPU a run here, against a few hundredths of a millisecond in one thread.

    python bench/hot_rows.py [--threads 6] [--runs 400]

Prints runs/s and PostgreSQL's CPU per run (its backends serving these threads), after a warm-up of
50 runs a thread. Uses the bench database (maschina_bench) and the in-memory broker.
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

WARM_UP = 50


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--runs", type=int, default=400, help="runs a thread, after the warm-up")
    args = parser.parse_args()

    common.recreate_database()
    common.django_setup("memory://")
    made = common.migrate_and_seed()
    from django.contrib.auth import get_user_model
    from django.db import connections

    from accounts.models import ApiKey
    from billing.selectors import plan_for
    from providers import Completion
    from runs.admission import run_create
    from runs.services import run_claim, run_complete

    user, _, agent = made["bench"]
    key = ApiKey.objects.get(user=user)
    # The threads' connections count as "our backends" (common.pg_backend_pids); the setup's did not.
    os.environ["PGAPPNAME"] = "maschina-hot-rows"
    connections.close_all()
    started, finished = threading.Barrier(args.threads + 1), threading.Barrier(args.threads + 1)

    def one_run(owner):
        run = run_create(
            user=owner, plan=plan_for(owner), agent=agent, key=key, input={"message": "hi"},
            model=None, timeout_secs=60, max_tokens=64,
        )  # fmt: skip
        claimed = run_claim(run.pk, 60)
        assert claimed is not None
        run_, token, _ = claimed
        assert run_complete(run_, token, Completion(text="x", input_tokens=10, output_tokens=20)) is not None

    def work():
        owner = get_user_model().objects.select_related("plan").get(pk=user.pk)
        for _ in range(WARM_UP):
            one_run(owner)
        started.wait()
        for _ in range(args.runs):
            one_run(owner)
        finished.wait()
        connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    started.wait()
    os.environ["PGAPPNAME"] = common.DRIVER_APP  # the meter's own connection, left out
    meter = common.CpuMeter({"postgres": common.pg_backend_pids})
    meter.start()
    t0 = time.perf_counter()
    finished.wait()
    elapsed = time.perf_counter() - t0
    used = meter.stop()
    for thread in threads:
        thread.join()
    runs = args.threads * args.runs
    print(
        f"{args.threads} threads, {runs} runs: {runs / elapsed:.0f} runs/s, "
        f"PostgreSQL {used['postgres'] / runs * 1e3:.3f} ms of CPU per run"
    )


if __name__ == "__main__":
    main()
