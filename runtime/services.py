"""A run's state transitions, each one conditional UPDATE, so two deliveries of the same task, a
cancel and the sweeper can race without two of them winning the same step."""
import datetime as dt

from django.db import transaction
from django.utils import timezone

from agents.models import Run, RunStatus
from billing.services import usage_settle
from routing.access import ModelInfo

from .runners import Completion


def run_claim(run_id) -> Run | None:
    """queued -> executing. The run if this caller won it, else None."""
    if Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(status=RunStatus.EXECUTING, started_at=timezone.now()):
        return Run.objects.get(pk=run_id)
    return None


def run_deadline(run: Run) -> dt.datetime:
    return run.started_at + dt.timedelta(seconds=run.timeout_secs)


def timeout_error(run: Run) -> dict:
    return {"code": "timeout", "message": f"The run did not finish within its timeout of {run.timeout_secs} seconds."}


def run_count_call(run_id) -> None:
    from django.db.models import F

    Run.objects.filter(pk=run_id).update(provider_calls=F("provider_calls") + 1)


def run_switch_model(run_id, model_id: str, entry: ModelInfo) -> bool:
    """Continue an executing run on a fallback model, billed at the fallback's multiplier."""
    return bool(
        Run.objects.filter(pk=run_id, status=RunStatus.EXECUTING).update(
            model=model_id, catalog_model=entry.id, provider=entry.provider, multiplier=entry.multiplier
        )
    )


def run_record_completion(run_id, completion: Completion) -> None:
    """Store the provider's answer before anything else, so no redelivery calls the provider again.

    A run canceled meanwhile keeps its status and gets no output, but its usage is recorded: it is
    billed for what the provider reported."""
    usage = {"input_tokens": completion.input_tokens, "output_tokens": completion.output_tokens}
    unrecorded = Run.objects.filter(pk=run_id, input_tokens__isnull=True)
    if not unrecorded.filter(status=RunStatus.EXECUTING).update(output={"text": completion.text}, **usage):
        unrecorded.filter(status=RunStatus.CANCELED, settled_at__isnull=True).update(**usage)


def run_finish(run_id, status: str, error: dict | None = None) -> None:
    """executing -> a terminal status, and settlement, in one transaction. A run that is already
    terminal (canceled, or finished by another delivery) keeps its status and is only settled."""
    with transaction.atomic():
        Run.objects.filter(pk=run_id, status=RunStatus.EXECUTING).update(status=status, error=error, finished_at=timezone.now())
        usage_settle(run_id)


def run_is_canceled(run_id) -> bool:
    return Run.objects.filter(pk=run_id, status=RunStatus.CANCELED).exists()
