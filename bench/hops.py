"""A diagnostic, not one of the numbered benchmarks: what it costs a run on the provider loop to do a
step of its database work on a work thread (runs.execution.Execution.db), as the worker does it.

In one process, set up as a worker on the project's pool (pooled connections, the work threads, the
provider loop), a coroutine on the loop hands steps to the work threads and awaits each:

- a `SELECT 1` a step, against two a step: the difference is what a step costs beyond its query
  (the hand-off there and back, and the pooled connection given back and taken again);
- an empty step: the hand-off alone;
- a `SELECT 1` on this thread with its connection kept, and given back to the pool after each.

    python bench/hops.py [--steps 3000] [--rounds 3]

Prints the CPU of this process per step, in µs, each round. Uses the bench database (maschina_bench).
"""

import argparse
import asyncio
import contextvars
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    # Settings pool a worker's connections when the process is a worker on the threads pool.
    os.environ["MASCHINA_WORKER_POOL"] = "threads"
    sys.argv = ["celery", "worker"]
    common.recreate_database()
    common.django_setup("memory://")
    from django.db import connection

    from maschina.db import release_connection
    from providers import aio
    from runs import execution

    assert connection.settings_dict["OPTIONS"].get("pool"), "the worker's connections are not pooled"
    work = execution._work()

    def select():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    def select_twice():
        select()
        select()

    def nothing():
        pass

    def select_and_give_back():
        select()
        release_connection()

    async def steps(n, fn):
        for _ in range(n):
            context = contextvars.copy_context()
            await asyncio.wrap_future(work.submit(context.run, execution._step, fn))

    def on_loop(n, fn):
        started = time.process_time()
        aio.submit(steps(n, fn)).result()
        return (time.process_time() - started) / n * 1e6

    def here(n, fn):
        started = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - started) / n * 1e6

    on_loop(500, select)  # warm-up: threads, connections, prepared statements
    n = args.steps
    for _ in range(args.rounds):
        one, two = on_loop(n, select), on_loop(n // 2, select_twice)
        empty, kept, given_back = on_loop(n, nothing), here(n, select), here(n, select_and_give_back)
        print(
            f"a step of one query {one:.1f} µs, of two {two:.1f} µs: a step costs {2 * one - two:.1f} "
            f"beyond its query; an empty step {empty:.1f}; a query here {kept:.1f}, giving its "
            f"connection back each time {given_back:.1f}"
        )


if __name__ == "__main__":
    main()
