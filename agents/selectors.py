from django.http import Http404

from maschina.errors import ApiError
from maschina.rows import rows_of

from .models import Agent, Run, RunStatus


def agent_get(*, owner, agent_id) -> Agent:
    """The caller's agent; another user's is indistinguishable from a missing one."""
    agent = rows_of(Agent).get(id=agent_id, owner=owner.pk)  # on every admission: compiled once
    if agent is None:
        raise Http404
    return agent


def agent_list(*, owner):
    return Agent.objects.filter(owner=owner).order_by("-created_at", "-id")


def run_get(*, user, run_id) -> Run:
    run = rows_of(Run).get(id=run_id, user=user.pk)
    if run is None:
        raise Http404
    return run


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
