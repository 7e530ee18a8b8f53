"""The gate: may this tier use this model, and which model runs.

Pure functions of (tier, requested model id, Rules): no database, no clock, so they can be tested
over every combination and benchmarked alone. `Rules` is an immutable snapshot built by
routing.snapshot from the catalog tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

MAX_MODEL_ID_LENGTH = 200  # the width of every model id column


@dataclass(frozen=True)
class ModelInfo:
    id: str
    display_name: str
    provider: str
    multiplier: Decimal
    min_tier: str
    is_active: bool
    is_local: bool
    fallback: str | None

    @property
    def is_pattern(self) -> bool:
        return self.id.endswith("*")


@dataclass(frozen=True)
class TierInfo:
    slug: str
    name: str
    rank: int
    monthly_token_quota: int | None
    monthly_run_quota: int | None
    quota_exempt: bool
    default_model: str | None
    max_tokens: int
    max_timeout_secs: int
    requests_per_minute: int | None = None  # None = unlimited
    max_concurrent_runs: int | None = None


@dataclass(frozen=True)
class Rules:
    tiers: dict[str, TierInfo]
    models: dict[str, ModelInfo]  # every row, patterns included, by id
    # (tier slug, model id) -> True (allow) / False (deny); overrides the min-tier rank comparison.
    overrides: dict[tuple[str, str], bool] = field(default_factory=dict)
    revision: int = 0

    if TYPE_CHECKING:
        # Set in __post_init__, not dataclass fields at run time (no __init__ argument, eq, hash or repr).
        _patterns: tuple[tuple[str, ModelInfo], ...] = field(init=False, repr=False, compare=False)
        _decisions: dict[tuple[str, str | None], Allowed | Denied] = field(
            init=False, repr=False, compare=False
        )

    def __post_init__(self) -> None:
        # Patterns longest prefix first, so the most specific pattern matches.
        patterns = sorted((m for m in self.models.values() if m.is_pattern), key=lambda m: -len(m.id))
        object.__setattr__(self, "_patterns", tuple((m.id[:-1], m) for m in patterns))
        object.__setattr__(
            self, "_decisions", {}
        )  # decide()'s memo: (tier slug, model asked for) -> decision

    def lookup(self, model_id: str) -> ModelInfo | None:
        """The catalog row for a model id: the exact row, else the longest matching pattern."""
        if "*" in model_id or len(model_id) > MAX_MODEL_ID_LENGTH:
            return None  # a pattern row describes models, it is not one; and no id is that long
        exact = self.models.get(model_id)
        if exact is not None:
            return exact
        for prefix, entry in self._patterns:
            # A pattern matches ids that extend its prefix; "ollama/" alone names no model.
            if len(model_id) > len(prefix) and model_id.startswith(prefix):
                return entry
        return None


# --- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    model_id: str  # the id that runs (a pattern match keeps the id asked for)
    entry: ModelInfo  # its catalog row (for a pattern match, the pattern row)
    requested: str | None  # what the body or agent asked for; None when the tier default was used


@dataclass(frozen=True)
class Denied:
    code: str  # unknown_model | model_unavailable | model_not_allowed
    model_id: str
    entry: ModelInfo | None = None
    tier: str | None = None


def is_allowed(rules: Rules, tier: TierInfo, entry: ModelInfo) -> bool:
    """A per-tier rule wins; otherwise the tier must rank at or above the model's min tier."""
    override = rules.overrides.get((tier.slug, entry.id))
    if override is not None:
        return override
    min_tier = rules.tiers.get(entry.min_tier)
    return min_tier is not None and tier.rank >= min_tier.rank


def decide(rules: Rules, tier: TierInfo, requested: str | None) -> Allowed | Denied:
    """Resolve the model for a run and check the tier may use it.

    `requested` is the body's model, else the agent's, else None for the tier default."""
    # A snapshot never changes, so its decisions are remembered: for its own tiers, and for the
    # default or a model id the catalog names exactly, a set the catalog bounds. Any other string
    # comes from a request body and is decided afresh, so no client can grow the memo.
    memoized = rules.tiers.get(tier.slug) is tier and (requested is None or type(requested) is str)
    if memoized:
        decision = rules._decisions.get((tier.slug, requested))
        if decision is not None:
            return decision
    decision = _decide(rules, tier, requested)
    if memoized and (requested is None or requested in rules.models):
        rules._decisions[(tier.slug, requested)] = decision
    return decision


def _decide(rules: Rules, tier: TierInfo, requested: str | None) -> Allowed | Denied:
    model_id = requested if requested else tier.default_model
    if not model_id:
        return Denied("model_unavailable", "", tier=tier.slug)
    entry = rules.lookup(model_id)
    if entry is None:
        return Denied("unknown_model", model_id, tier=tier.slug)
    if not entry.is_active:
        return Denied("model_unavailable", model_id, entry, tier.slug)
    if not is_allowed(rules, tier, entry):
        return Denied("model_not_allowed", model_id, entry, tier.slug)
    return Allowed(model_id, entry, requested or None)


def model_listed(allowed_models: list[str] | None, model_id: str) -> bool:
    """Whether a key's model list (CONTRACT section 10) names `model_id`: exactly, or by a pattern
    ("ollama/*") that the id extends. None lists nothing out: any model the tier allows."""
    if allowed_models is None:
        return True
    return any(
        model_id == listed
        or (listed.endswith("*") and len(model_id) >= len(listed) and model_id.startswith(listed[:-1]))
        for listed in allowed_models
    )


def model_list_problem(rules: Rules, value) -> str | None:
    """Why `value` is not a key's model list (a non-empty list of catalog ids and patterns; an id a
    pattern row covers, such as ollama/qwen2, is in the catalog), or None."""
    # isprintable() refuses what jsonb cannot store (NUL, lone surrogates) and no model id holds.
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item and item.isprintable() for item in value)
    ):
        return "Must be null or a non-empty list of model ids."
    unknown = [item for item in value if item not in rules.models and rules.lookup(item) is None]
    return f"Not in the catalog: {', '.join(unknown[:10])}." if unknown else None


def usable_fallback(
    rules: Rules, tier: TierInfo, entry: ModelInfo, allowed_models: list[str] | None = None
) -> ModelInfo | None:
    """The model a run continues on when `entry` is out of retries: its fallback, if the tier may use
    it and the key that admitted the run lists it."""
    fallback = rules.models.get(entry.fallback) if entry.fallback else None
    if fallback is None or not fallback.is_active or not is_allowed(rules, tier, fallback):
        return None
    if not model_listed(allowed_models, fallback.id):
        return None
    return fallback


def denied_by_rule(rules: Rules, tier: TierInfo, entry: ModelInfo) -> bool:
    """A per-tier rule denies `entry` although the tier ranks at or above its min tier."""
    min_tier = rules.tiers.get(entry.min_tier)
    return rules.overrides.get((tier.slug, entry.id)) is False and (
        min_tier is not None and tier.rank >= min_tier.rank
    )


def required_tier(rules: Rules, tier: TierInfo, entry: ModelInfo) -> str:
    """The plan to name when `tier` may not use `entry`: its min tier, or, when a rule denies it at
    or above that, the lowest-ranked tier above the caller's that may use it."""
    min_tier = rules.tiers.get(entry.min_tier)
    if min_tier is None or tier.rank < min_tier.rank:
        return entry.min_tier
    above = sorted((t for t in rules.tiers.values() if t.rank > tier.rank), key=lambda t: (t.rank, t.slug))
    return next((t.slug for t in above if is_allowed(rules, t, entry)), entry.min_tier)


@dataclass(frozen=True)
class Access:
    """What the admin shows for a (tier, catalog row): decide()'s verdict and the reason for it."""

    allowed: bool
    reason: str


def access_of(rules: Rules, tier: TierInfo, entry: ModelInfo) -> Access:
    """Whether `tier` may run `entry`, decided by decide() itself (for a pattern row, on an id only
    that row matches), and why: an allow or deny rule of the tier, else the model's min tier."""
    probe = entry.id
    if entry.is_pattern:
        probe = entry.id[:-1] + "any-model"
        if rules.lookup(probe) is not entry:  # an exact row or a longer pattern takes that id
            probe = entry.id[:-1] + "\x00"
    allowed = isinstance(decide(rules, tier, probe), Allowed)
    override = rules.overrides.get((tier.slug, entry.id))
    min_tier = rules.tiers.get(entry.min_tier)
    if not entry.is_active:
        reason = "inactive"
    elif override is True:
        reason = f"allowed by a rule of {tier.slug} (min tier {entry.min_tier})"
    elif override is False:
        reason = f"denied by a rule of {tier.slug} (min tier {entry.min_tier})"
    elif min_tier is not None and tier.rank >= min_tier.rank:
        reason = f"min tier {entry.min_tier}: {tier.slug} ranks at or above it"
    else:
        reason = f"min tier {entry.min_tier}: {tier.slug} ranks below it"
    if entry.is_pattern:
        reason += f"; pattern row: any id starting with {entry.id[:-1]}"
    return Access(allowed, reason)
