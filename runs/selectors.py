from django.db.models import Q
from django.http import Http404

from accounts.models import ApiKey
from agents.models import Agent
from maschina.db.rows import rows_of
from maschina.errors import ApiError
from routing.models import Tier

from .models import Run, RunStatus


def run_get(*, user, run_id) -> Run:
    run = rows_of(Run).get(id=run_id, user=user.pk)
    if run is None:
        raise Http404
    return run


def run_key_models(run: Run) -> list[str] | None:
    """The model list of the key that admitted `run` (None: any model), read when a fallback is
    considered, so a fallback the key does not list is not taken (CONTRACT section 10)."""
    if run.key_id is None:
        return None
    return ApiKey.objects.filter(pk=run.key_id).values_list("allowed_models", flat=True).first()


def run_list(*, user, status: str | None = None, agent: Agent | None = None):
    runs = Run.objects.filter(user=user)
    if agent is not None:
        runs = runs.filter(agent=agent)
    if status is not None:
        if status not in RunStatus.values:
            raise ApiError(
                "invalid",
                "The request has invalid fields.",
                fields={"status": [f"Must be one of: {', '.join(RunStatus.values)}."]},
            )
        runs = runs.filter(status=status)
    return runs.order_by("-created_at", "-id")


def runs_referencing(obj):
    """The runs admitted under a tier or catalog row (routing.protection keeps those from deletion)."""
    if isinstance(obj, Tier):
        return Run.objects.filter(tier=obj.slug)
    # A run that fell back keeps the model it asked for in requested_model (or, when it used its
    # tier's default, nowhere but its tier), and its catalog_model moves to the fallback's row.
    return Run.objects.filter(Q(catalog_model=obj.id) | Q(requested_model=obj.id) | Q(model=obj.id))


def queued_count() -> int:
    """Runs admitted and not yet claimed: the queue depth /metrics reports."""
    return Run.objects.filter(status=RunStatus.QUEUED).count()
