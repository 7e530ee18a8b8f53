"""Admitting a run: run_create is the gate of CONTRACT section 5 after the body is valid:
risk -> model (and the key's model list) -> concurrency -> minute -> quota (the user's, then the
key's), then the run row and its dispatch after commit. Every refusal is raised
before anything is written, and the reservation shares the run's transaction."""

from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent
from agents.services import default_system_prompt
from billing.history import UsageLine
from billing.periods import period_of
from billing.plans import limits_for
from billing.pricing import input_token_bound, max_tokens_within, reservation
from billing.quota import QuotaExceeded, quota_reserve, quota_reserve_inserting
from billing.throttle import MinuteWindow
from maschina.db.rows import rows_of
from routing.access import Allowed, Denied, decide, model_listed
from routing.snapshot import get_rules

from .dispatch import admission_dispatch, fair_priority, publish_admitted
from .input_limits import input_extras_too_long
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


class KeyModelNotAllowed(Exception):
    def __init__(self, model_id: str, allowed_models: list[str]):
        super().__init__(model_id)
        self.model_id, self.allowed_models = model_id, allowed_models


def run_create(**kwargs) -> Run:
    return run_admit(**kwargs)[0]


def run_admit(
    *,
    user,
    plan,
    agent: Agent,
    key=None,
    input: dict,
    model,
    timeout_secs: int,
    max_tokens: int,
    idempotency: tuple[str, str] | None = None,
) -> tuple[Run, MinuteWindow | None]:
    """The run admitted, and the user's minute window after it (None without a minute limit).
    `idempotency` is the request's Idempotency-Key and the digest of its agent and body, stored on
    the run, whose unique constraint makes a duplicate fail with IntegrityError (runs.idempotency)."""
    message = input["message"]
    if len(message) > MAX_MESSAGE_CHARS:
        raise InputTooLong("input.message is longer than 100,000 characters.")
    if input_extras_too_long(input):
        raise InputTooLong("input other than message is longer than 16 KiB as JSON.")
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
    key_models = key.allowed_models if key is not None else None
    if not model_listed(key_models, decision.model_id):
        raise KeyModelNotAllowed(decision.model_id, key_models or [])

    system_prompt = agent.system_prompt or default_system_prompt(agent.name)
    entry = decision.entry
    input_bound = input_token_bound(system_prompt, message)
    reserve = reservation(input_bound, max_tokens, entry.multiplier)
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
        idempotency_key=idempotency[0] if idempotency else None,
        request_digest=idempotency[1] if idempotency else "",
        **admission_dispatch(now),
    )
    limits = limits_for(plan, tier)
    quota = {
        "user_id": user.pk,
        "period": period,
        "tokens": reserve,
        "limits": limits,
        "now": now,
        "key_id": key.pk if key is not None else None,
        "key_limit": key.monthly_token_limit if key is not None else None,
        "line": UsageLine.of(created_at=now, model=run.model, agent_id=run.agent_id, key_id=run.key_id),
    }
    # PostgreSQL: the limits and the run's INSERT in one statement, which skips Run.save()
    # (Run has neither a save() nor signals of its own; tests/test_statements.py holds it to that).
    admitted = None
    if connection.vendor == "postgresql":
        admitted = quota_reserve_inserting(rows_of(Run).insert_sql(run, source="reserved"), **quota)
    if admitted is not None:
        run._state.adding, run._state.db = False, connection.alias
    else:
        # The general way, and SQLite's: the run row first and the limits last, so the user's
        # counter rows, which every admission and settlement of the user updates, stay locked only
        # until the commit. A refusal rolls the run back with the rest.
        try:
            with transaction.atomic():
                run.save(force_insert=True)
                admitted = quota_reserve(**quota)
        except QuotaExceeded as exceeded:
            if exceeded.quota in ("tokens", "key_tokens") and entry.multiplier > 0:
                room = exceeded.limit - exceeded.used - (exceeded.reserved or 0)
                exceeded.max_tokens_fit = max_tokens_within(room, input_bound, entry.multiplier)
            raise
    # Only once the run is committed (at once, outside a transaction): a worker must never look
    # for a row that is not there yet.
    if run.dispatches:  # else the broker's circuit is open: the sweeper publishes it
        priority = fair_priority(admitted.in_flight)
        transaction.on_commit(lambda: publish_admitted(run.pk, run.timeout_secs, priority), robust=True)
    return run, admitted.window
