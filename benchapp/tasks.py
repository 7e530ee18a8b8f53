from celery import shared_task


@shared_task(name="benchapp.noop", acks_late=True)
def noop(row_id=None) -> None:
    """The baseline of bench/worker_throughput.py: a task that does nothing, on the run task's settings."""
    return None
