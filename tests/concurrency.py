"""Calls released at the same instant, for tests of races against the real database."""

import threading

from django.db import connection


def race(count, target, timeout=60) -> list:
    """Run `target` on `count` threads released together by a barrier. Returns each call's result,
    or the exception it raised, so the test can assert on every outcome."""
    barrier = threading.Barrier(count)
    outcomes, lock = [], threading.Lock()

    def worker():
        try:
            barrier.wait()
            outcome = target()
        except Exception as exc:
            outcome = exc
        finally:
            connection.close()  # each thread's own connection, or the test database cannot be dropped
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return outcomes
