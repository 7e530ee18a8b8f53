"""Writes of agents: validated like the admin's edits (full_clean)."""

from .models import Agent


def default_system_prompt(agent_name: str) -> str:
    return f'You are a Maschina agent named "{agent_name}". Complete the task provided.'


def agent_create(*, owner, name, description="", system_prompt="", model=None) -> Agent:
    agent = Agent(owner=owner, name=name, description=description, system_prompt=system_prompt, model=model)
    agent.full_clean()
    agent.save()
    return agent


def agent_update(*, agent: Agent, **fields) -> Agent:
    for name, value in fields.items():
        setattr(agent, name, value)
    agent.full_clean()
    agent.save()
    return agent


def agent_delete(*, agent: Agent) -> None:
    agent.delete()  # its runs stay, with agent = null: they are billing history
