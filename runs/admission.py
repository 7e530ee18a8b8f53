"""Admitting a run: run_create is the gate of CONTRACT section 5 after the body is valid:
risk -> model -> quota, then the run row and its dispatch after commit. Every refusal is raised
before anything is written, and the reservation shares the run's transaction."""

from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent
from agents.services import default_system_prompt
from billing.history import UsageLine
from billing.periods import period_of
from billing.plans import limits_for
from billing.pricing import input_token_bound, reservation
from billing.quota import quota_reserve, quota_reserve_inserting
from maschina.db.rows import rows_of
from routing.access import Allowed, Denied, decide
from routing.snapshot import get_rules

from .dispatch import admission_dispatch, publish_admitted
from .models import Run
from .risk import MAX_MESSAGE_CHARS, risk_flags
from .serializers import storable_json_problem


class InputTooLong(Exception):
    pass


class RiskBlocked(Exception):
    def __init__(self, flags):
        super().__init__(", ".join(flags))
        self.flags = flags


class ModelNotAString(Exception):
    pass


class ModelDenied(Exception):
    def __init__(self, denial: Denied, rules):
        super().__init__(denial.code)
        self.denial, self.rules = denial, rules


def run_create(
    *, user, plan, agent: Agent, key=None, input: dict, model, timeout_secs: int, max_tokens: int
) -> Run:
    message = input["message"]
    if len(message) > MAX_MESSAGE_CHARS:
        raise InputTooLong()
    flags = risk_flags(message)
    if flags:
        raise RiskBlocked(flags)

    if model is not None and (not isinstance(model, str) or not model or storable_json_problem(model)):
        raise ModelNotAString()
    rules = get_rules()
    tier = rules.tiers[plan.tier_id]
    decision = decide(rules, tier, model or agent.model)
    if not isinstance(decision, Allowed):
        raise ModelDenied(decision, rules)

    system_prompt = agent.system_prompt or default_system_prompt(agent.name)
    entry = decision.entry
    reserve = reservation(input_token_bound(system_prompt, message), max_tokens, entry.multiplier)
    now = timezone.now()
    period = period_of(now)
    run = Run(
        user=user,
        agent=agent,
        key=key,
        tier=tier.slug,
        requested_model=decision.requested,
        model=decision.model_id,
        catalog_model=entry.id,
        provider=entry.provider,
        multiplier=entry.multiplier,
        system_prompt=system_prompt,
        input=input,
        timeout_secs=timeout_secs,
        max_tokens=max_tokens,
        period=period,
        reserved_tokens=reserve,
        created_at=now,
        **admission_dispatch(now),
    )
    limits = limits_for(plan, tier)
    line = UsageLine.of(created_at=now, model=run.model, agent_id=run.agent_id, key_id=run.key_id)
    quota = {"user_id": user.pk, "period": period, "tokens": reserve, "limits": limits, "line": line}
    # PostgreSQL: the reservation and the run's INSERT in one statement, which skips Run.save()
    # (Run has neither a save() nor signals of its own; tests/test_statements.py holds it to that).
    if connection.vendor == "postgresql" and quota_reserve_inserting(
        rows_of(Run).insert_sql(run, source="reserved"), **quota
    ):
        run._state.adding, run._state.db = False, connection.alias
    else:
        # The general way, and SQLite's: the run row first and the quota last, so the user's counter
        # row, which every admission and settlement of the user updates, stays locked only until
        # the commit. A refusal rolls the run back with the rest.
        with transaction.atomic():
            run.save(force_insert=True)
            quota_reserve(**quota)
    # Only once the run is committed (at once, outside a transaction): a worker must never look
    # for a row that is not there yet.
    transaction.on_commit(lambda: publish_admitted(run.pk, run.timeout_secs), robust=True)
    return run
