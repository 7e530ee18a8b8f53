"""An in-process snapshot of tiers, catalog and rules, so the gate costs no query per request.

Every change to those tables bumps RulesRevision in the same transaction (routing.signals). A process
re-reads the revision at most every RULES_REFRESH_SECS and rebuilds its snapshot when it moved, so an
operator's edit reaches every web and worker process within that interval, without a restart.

An API request learns the revision sooner, for free: the API-key lookup reads it as one more column
(accounts.key_lookup), and observe_revision() drops a snapshot older than that. So a run admitted after an
edit committed is always decided and priced by it, in whichever process it lands."""

import threading
import time
from typing import TypedDict

from django.conf import settings

from .access import ModelInfo, Rules, TierInfo
from .models import CatalogModel, RulesRevision, Tier, TierModelRule


class _State(TypedDict):
    rules: Rules | None
    checked_at: float


_lock = threading.Lock()
_state: _State = {"rules": None, "checked_at": 0.0}


def current_revision() -> int:
    return RulesRevision.objects.filter(pk=1).values_list("value", flat=True).first() or 0


def build_rules(revision: int = 0, tiers=None, models=None, rules=None) -> Rules:
    """Build a Rules snapshot from the database, or from the given (unsaved) rows."""
    tiers = list(Tier.objects.all()) if tiers is None else tiers
    models = list(CatalogModel.objects.all()) if models is None else models
    rules = list(TierModelRule.objects.all()) if rules is None else rules
    return Rules(
        tiers={
            t.slug: TierInfo(
                slug=t.slug,
                name=t.name,
                rank=t.rank,
                monthly_token_quota=t.monthly_token_quota,
                monthly_run_quota=t.monthly_run_quota,
                quota_exempt=t.quota_exempt,
                default_model=t.default_model_id,
                max_tokens=t.max_tokens,
                max_timeout_secs=t.max_timeout_secs,
                requests_per_minute=t.requests_per_minute,
                max_concurrent_runs=t.max_concurrent_runs,
            )
            for t in tiers
        },
        models={
            m.id: ModelInfo(
                id=m.id,
                display_name=m.display_name,
                provider=m.provider,
                multiplier=m.multiplier,
                min_tier=m.min_tier_id,
                is_active=m.is_active,
                is_local=m.is_local,
                fallback=m.fallback_id,
            )
            for m in models
        },
        overrides={(r.tier_id, r.model_id): r.effect == "allow" for r in rules},
        revision=revision,
    )


def get_rules() -> Rules:
    now = time.monotonic()
    rules = _state["rules"]
    if rules is not None and now - _state["checked_at"] < settings.RULES_REFRESH_SECS:
        return rules
    with _lock:
        revision = current_revision()
        rules = _state["rules"]
        if rules is None or rules.revision != revision:
            rules = build_rules(revision)
            _state["rules"] = rules
        _state["checked_at"] = time.monotonic()
        return rules


def observe_revision(revision: int | None) -> None:
    """A request read the committed revision: a snapshot older than it is dropped (the next get_rules()
    rebuilds it), one at it needs no check for another interval."""
    revision = revision or 0
    with _lock:
        rules = _state["rules"]
        if rules is None:
            return
        if rules.revision < revision:
            _state["rules"] = None
        elif rules.revision == revision:
            _state["checked_at"] = time.monotonic()


def invalidate() -> None:
    """Forget the snapshot in this process (after a local change commits)."""
    with _lock:
        _state["rules"] = None
        _state["checked_at"] = 0.0
