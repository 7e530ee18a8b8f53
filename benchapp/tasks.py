from celery import shared_task

from billing.services import token_alerts_record
from runtime.runners import Completion
from runtime.services import run_claim, run_complete

# What the emulator answers, as the runner reads it (input 20 + cache writes 5 + cache reads 7).
EMULATED_ANSWER = Completion(text="echo: Summarize: the quick brown fox.", input_tokens=32, output_tokens=30)


@shared_task(name="benchapp.noop", acks_late=True)
def noop(row_id=None) -> None:
    """The baseline of bench/worker_throughput.py: a task that does nothing, on the run task's settings."""
    return None


@shared_task(name="benchapp.run_without_provider", acks_late=True)
def run_without_provider(run_id: str, timeout_secs: int) -> None:
    """Benchmark 4's breakdown: a queued run's way through runtime.execution without its provider
    call (the claim, the settlement, the token alerts), the provider's answer a constant. It
    measures what the run costs besides the call; it is not a way to run anything."""
    run, token, _ = run_claim(run_id, timeout_secs)
    counters = run_complete(run, token, EMULATED_ANSWER)
    token_alerts_record(run, counters)
