from django.http import Http404

from maschina.errors import ApiError

from .models import Agent, Run, RunStatus


def agent_get(*, owner, agent_id) -> Agent:
    """The caller's agent; another user's is indistinguishable from a missing one."""
    # get(), not first(): first() would add the model's ORDER BY to a primary-key read.
    try:
        return Agent.objects.get(owner=owner, pk=agent_id)
    except Agent.DoesNotExist:
        raise Http404 from None


def agent_list(*, owner):
    return Agent.objects.filter(owner=owner).order_by("-created_at", "-id")


def run_get(*, user, run_id) -> Run:
    try:
        return Run.objects.get(user=user, pk=run_id)
    except Run.DoesNotExist:
        raise Http404 from None


def run_list(*, user, status: str | None = None, agent: Agent | None = None):
    runs = Run.objects.filter(user=user)
    if agent is not None:
        runs = runs.filter(agent=agent)
    if status is not None:
        if status not in RunStatus.values:
            raise ApiError("invalid", "The request has invalid fields.", fields={"status": [f"Must be one of: {', '.join(RunStatus.values)}."]})
        runs = runs.filter(status=status)
    return runs.order_by("-created_at", "-id")
