"""Invariants of the catalog that span rows (CONTRACT section 4), checked on the whole catalog as it
would be after an edit, so no edit in the admin or in code can leave billing inconsistent:

- a tier's default model exists, is an exact (not pattern) row, is active, and the tier may use it;
- a fallback is an exact row whose multiplier is not above its model's;
- fallbacks form no cycle.

Single-row invariants (multiplier >= 0, quotas >= 0, ...) are database check constraints."""

from django.core.exceptions import ValidationError

from .access import ModelInfo, Rules, is_allowed
from .models import CatalogModel, Tier, TierModelRule


def catalog_problems(rules: Rules) -> list[tuple[str, str, str]]:
    """Every broken invariant as (kind, id, message); kind is "tier" or "model"."""
    problems = []
    for tier in rules.tiers.values():
        entry = rules.models.get(tier.default_model) if tier.default_model else None
        if entry is None:
            problems.append(("tier", tier.slug, f"Tier {tier.slug} has no default model."))
        elif entry.is_pattern:
            problems.append(
                (
                    "tier",
                    tier.slug,
                    f"The default model of {tier.slug} must be a model, not the pattern {entry.id}.",
                )
            )
        elif not entry.is_active:
            problems.append(
                ("tier", tier.slug, f"{entry.id} is inactive, but it is the default model of {tier.slug}.")
            )
        elif not is_allowed(rules, tier, entry):
            problems.append(
                ("tier", tier.slug, f"{entry.id} is the default model of {tier.slug}, which may not use it.")
            )
    for entry in rules.models.values():
        if not entry.fallback:
            continue
        fallback = rules.models.get(entry.fallback)
        if fallback is None:
            problems.append(("model", entry.id, f"The fallback of {entry.id} does not exist."))
            continue
        if fallback.is_pattern:
            problems.append(
                (
                    "model",
                    entry.id,
                    f"The fallback of {entry.id} must be a model, not the pattern {fallback.id}.",
                )
            )
        if fallback.multiplier > entry.multiplier:
            problems.append(
                (
                    "model",
                    entry.id,
                    f"The fallback {fallback.id} ({fallback.multiplier}x) costs more than "
                    f"{entry.id} ({entry.multiplier}x).",
                )
            )
        current: ModelInfo | None
        seen, current = {entry.id}, fallback
        while current is not None and current.fallback:
            if current.fallback in seen:
                problems.append(("model", entry.id, f"The fallbacks of {entry.id} form a cycle."))
                break
            seen.add(current.id)
            current = rules.models.get(current.fallback)
    return problems


def _candidate_rules(tier=None, model=None, rule=None, tier_rules=None) -> Rules:
    """The catalog as it would be with `tier`/`model`/`rule` saved, or with `tier_rules` (a tier's whole
    set of rules, {model id: effect}) in place of that tier's rules."""
    from .snapshot import build_rules

    tiers = {t.slug: t for t in Tier.objects.all()}
    models = {m.id: m for m in CatalogModel.objects.all()}
    rules = {(r.tier_id, r.model_id): r for r in TierModelRule.objects.all()}
    if tier is not None:
        tiers[tier.slug] = tier
    if model is not None:
        models[model.id] = model
    if rule is not None:
        rules = {k: r for k, r in rules.items() if r.pk != rule.pk or rule.pk is None}
        rules[(rule.tier_id, rule.model_id)] = rule
    if tier_rules is not None:
        rules = {k: r for k, r in rules.items() if k[0] != tier.slug}
        for model_id, effect in tier_rules.items():
            rules[(tier.slug, model_id)] = TierModelRule(tier_id=tier.slug, model_id=model_id, effect=effect)
    return build_rules(0, list(tiers.values()), list(models.values()), list(rules.values()))


def _raise(problems, own_kind, own_id, own_field):
    if not problems:
        return
    own = [msg for kind, pk, msg in problems if kind == own_kind and pk == own_id]
    other = [msg for kind, pk, msg in problems if not (kind == own_kind and pk == own_id)]
    errors = {}
    if own:
        errors[own_field] = own
    if other:
        errors["__all__"] = other
    raise ValidationError(errors)


def validate_tier(tier: Tier) -> None:
    if tier.default_model_id is None:
        raise ValidationError({"default_model": "A tier needs a default model."})
    _raise(catalog_problems(_candidate_rules(tier=tier)), "tier", tier.slug, "default_model")


def validate_model(model: CatalogModel) -> None:
    if model.id.count("*") > 1 or ("*" in model.id and not model.id.endswith("*")):
        raise ValidationError({"id": "A pattern has a single '*', at the end."})
    if not model.min_tier_id or model.multiplier is None:
        return  # the field errors already say what is missing
    _raise(catalog_problems(_candidate_rules(model=model)), "model", model.id, "fallback")


def validate_rule(rule: TierModelRule) -> None:
    if not rule.tier_id or not rule.model_id:
        return
    _raise(catalog_problems(_candidate_rules(rule=rule)), "rule", "", "effect")


def validate_tier_rules(tier: Tier, tier_rules: dict[str, str]) -> None:
    """A tier and its whole set of rules saved together (the admin's tier page with its inline rules).
    Only the problems the rules cause are raised: the tier's own form reports the others."""
    problems = catalog_problems(_candidate_rules(tier=tier, tier_rules=tier_rules))
    already = set(catalog_problems(_candidate_rules(tier=tier)))
    caused = [message for problem in problems if problem not in already for message in problem[2:]]
    if caused:
        raise ValidationError(caused)
