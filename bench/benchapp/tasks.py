from celery import shared_task

from providers import Completion
from runs.services import run_claim, run_complete, run_token_alerts_record


@shared_task(name="benchapp.noop", acks_late=True)
def noop(row_id=None) -> None:
    """The baseline of bench/worker_throughput.py: a task that does nothing, on the run task's settings."""
    return None


@shared_task(name="benchapp.run_without_provider", acks_late=True)
def run_without_provider(run_id: str, timeout_secs: int, answer: dict) -> None:
    """Benchmark 4's breakdown: a queued run's way through runs.execution without its provider
    call (the claim, the settlement, the token alerts), `answer` (a Completion's fields) standing in
    for the provider's. It measures what a run costs besides the call; it is not a way to run anything.
    Skipped too, so the breakdown is if anything faster than a run could be: the Execution's set-up,
    the rules snapshot's read and the hand-off to the provider loop."""
    claimed = run_claim(run_id, timeout_secs)
    if claimed is None:
        raise RuntimeError(
            f"run {run_id} could not be claimed: the breakdown's runs must be queued and this task's alone"
        )
    run, token, _ = claimed
    counters = run_complete(run, token, Completion(**answer))
    if counters is None:
        raise RuntimeError(f"run {run_id} was taken from this claim before it completed")
    run_token_alerts_record(run, counters)
