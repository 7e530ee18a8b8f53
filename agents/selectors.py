from django.http import Http404

from maschina.db.rows import rows_of

from .models import Agent


def agent_get(*, owner, agent_id) -> Agent:
    """The caller's agent; another user's is indistinguishable from a missing one."""
    agent = rows_of(Agent).get(id=agent_id, owner=owner.pk)  # on every admission: compiled once
    if agent is None:
        raise Http404
    return agent


def agent_list(*, owner):
    return Agent.objects.filter(owner=owner).order_by("-created_at", "-id")
