"""One worker node holds hundreds of provider calls at once: `celery -A maschina worker` with no option
(the threads pool, its default concurrency, a bounded database pool), against the emulator answering
after a delay. Every run completes billed once; the node's PostgreSQL connections stay under the
bound; cancels stop the runs at once; a node killed with hundreds in flight loses none of them."""

import os
import signal
import threading
import time

import pytest
from django.db import connection

from billing.models import LedgerEntry, UsagePeriod
from billing.selectors import plan_for
from runs.admission import run_create
from runs.audit import audit
from runs.models import TERMINAL_STATUSES, Run, RunStatus
from runs.services import run_cancel

from .emulators import Reply
from .processes import publish_many, start_beat, start_worker, wait_for, wait_worker_ready

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
NODE = "maschina-node-under-test"  # the node's application_name in pg_stat_activity
CONNECTION_BOUND = 20


class ConnectionSampler:
    """Counts the node's PostgreSQL connections every 0.1 s, from a connection of its own."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        import psycopg

        settings = connection.settings_dict
        with psycopg.connect(
            host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"]
        ) as conn:
            conn.autocommit = True
            while not self._stop.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [NODE]
                ).fetchone()
                self.peak = max(self.peak, count)
                time.sleep(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def admit(make_user, make_agent, n, timeout_secs=120):
    user = make_user("enterprise")
    agent = make_agent(user)
    plan = plan_for(user)
    return [
        run_create(
            user=user, plan=plan, agent=agent, input={"message": "hi"}, model="claude-haiku-4-5",
            timeout_secs=timeout_secs, max_tokens=64,
        )
        for _ in range(n)
    ]  # fmt: skip


def start_node(cluster, name="node", **env):
    worker = start_worker(
        {**cluster["env"], "PGAPPNAME": NODE, **env}, cluster["log_dir"], name=name, concurrency=None
    )
    cluster["processes"].append(worker)
    wait_worker_ready(worker)
    return worker


def node_threads(node) -> int:
    status = open(f"/proc/{node.proc.pid}/status").read()
    return int(status.split("Threads:")[1].split()[0])


def test_one_node_holds_500_runs_in_flight(cluster, make_user, make_agent, anthropic_emulator):
    runs = admit(make_user, make_agent, 500, timeout_secs=300)
    # Every call is held until the node has all 500 open, however slowly this machine lets it claim
    # them: the node must hold them all at once.
    anthropic_emulator.hold()
    node = start_node(cluster)
    banner = node.log_path.read_text()
    # The plain command's pool, from our configuration: a thousand runs, on a few threads.
    assert "holding up to 1000 runs in flight" in banner, banner
    assert "concurrency: 8 (worker_pool)" in banner, banner
    sampler = ConnectionSampler()
    try:
        publish_many(cluster, runs)
        wait_for(lambda: anthropic_emulator.in_flight >= 500, 150, "500 provider calls at once")
        threads = node_threads(node)
        anthropic_emulator.release()
        ids = [run.pk for run in runs]
        wait_for(
            lambda: Run.objects.filter(pk__in=ids, status=RunStatus.COMPLETED).count() == 500,
            60,
            "completion",
        )
    finally:
        anthropic_emulator.release()
        peak_connections = sampler.stop()
    print(f"\npeak in flight {anthropic_emulator.peak_in_flight}, peak connections {peak_connections}")
    assert anthropic_emulator.peak_in_flight >= 500
    assert threads < 50, threads  # a waiting run holds no thread
    assert 0 < peak_connections <= CONNECTION_BOUND
    assert LedgerEntry.objects.filter(run__in=ids).count() == 500
    assert set(LedgerEntry.objects.filter(run__in=ids).values_list("billed_tokens", flat=True)) == {62}
    assert audit()[1] == []


def test_50_in_flight_runs_canceled_stop_at_once(cluster, make_user, make_agent, anthropic_emulator):
    runs = admit(make_user, make_agent, 50)
    # Each stream starts at once (message_start reports the input), then sends a fragment every 0.2 s
    # for a minute: the cancels come mid-stream.
    model = runs[0].model
    anthropic_emulator.queue(model, *[Reply(chunks=["word "] * 300, delta_delay=0.2) for _ in runs])
    start_node(cluster)
    publish_many(cluster, runs)
    ids = [run.pk for run in runs]
    wait_for(lambda: anthropic_emulator.in_flight >= 50, 30, "50 provider streams at once")
    canceled_at = time.monotonic()
    for run in runs:
        assert run_cancel(run=Run.objects.get(pk=run.pk)).status == RunStatus.CANCELED
    settled = wait_for(
        lambda: Run.objects.filter(pk__in=ids, settled_at__isnull=False).count() == 50, 10, "settlement"
    )
    print(f"\n50 cancels settled {settled - canceled_at:.2f} s after the first")
    assert (
        settled - canceled_at < 1 + 1.5
    )  # within a second of the last cancel, which came 1.5 s at most after
    wait_for(lambda: len(anthropic_emulator.disconnects) == 50, 5, "the streams closed")
    billed = set()
    for run in Run.objects.filter(pk__in=ids):
        assert run.status == RunStatus.CANCELED
        assert run.billed_tokens is not None  # what the stream had reported when it closed
        billed.add(run.billed_tokens)
    assert LedgerEntry.objects.filter(run__in=ids).count() == 50
    assert UsagePeriod.objects.get(user=runs[0].user).tokens_reserved == 0
    assert audit()[1] == []


def test_a_node_killed_with_300_in_flight_loses_none(cluster, make_user, make_agent, anthropic_emulator):
    runs = admit(make_user, make_agent, 300, timeout_secs=300)
    anthropic_emulator.hold()  # until the node is killed with all 300 calls open
    doomed = start_node(cluster, name="doomed")
    publish_many(cluster, runs)
    try:
        wait_for(lambda: anthropic_emulator.in_flight >= 300, 150, "300 provider calls at once")
        os.killpg(doomed.proc.pid, signal.SIGKILL)  # its runs are only in the database now
        doomed.proc.wait(5)
    finally:
        anthropic_emulator.release()
    killed_at = time.monotonic()
    fresh = start_node(cluster, name="fresh")
    cluster["processes"].append(start_beat(cluster["env"], cluster["log_dir"]))
    ids = [run.pk for run in runs]
    done = wait_for(
        lambda: (
            Run.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES, settled_at__isnull=False).count()
            == 300
        ),
        60 + 60,
        "every run terminal",
    )
    print(f"\n300 runs terminal {done - killed_at:.1f} s after the kill")
    assert fresh.proc.poll() is None
    assert Run.objects.filter(pk__in=ids, status=RunStatus.COMPLETED).count() == 300
    assert LedgerEntry.objects.filter(run__in=ids).count() == 300
    assert audit()[1] == []


def test_a_warm_shutdown_ends_the_runs_in_flight_first(cluster, make_user, make_agent, anthropic_emulator):
    """A run's message is acknowledged once it is claimed; a warm shutdown (SIGTERM, as a deploy
    stops a node) waits for the runs the node holds to end, so none is left for the sweeper to start
    again and no provider is called twice."""
    runs = admit(make_user, make_agent, 20)
    anthropic_emulator.queue(runs[0].model, *[Reply(delay=2.0) for _ in runs])
    node = start_node(cluster)
    publish_many(cluster, runs)
    wait_for(lambda: anthropic_emulator.in_flight >= 20, 30, "20 provider calls at once")
    os.killpg(node.proc.pid, signal.SIGTERM)
    assert node.proc.wait(15) == 0
    ids = [run.pk for run in runs]
    assert Run.objects.filter(pk__in=ids, status=RunStatus.COMPLETED, settled_at__isnull=False).count() == 20
    assert len(anthropic_emulator.calls) == 20
    assert LedgerEntry.objects.filter(run__in=ids).count() == 20
