"""Tiers and catalog rows that runs were admitted under are never deleted: runs keep the tier slug and
catalog id as text (they are billing history and must survive catalog edits), so the database cannot
PROTECT them itself. Deactivate a model, or stop assigning a tier, instead."""

from collections.abc import Callable
from typing import Any

from django.db.models import ProtectedError, QuerySet
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from .models import CatalogModel, Tier

# Callables obj -> a QuerySet of the rows that reference a tier or catalog row by its text: the apps
# that keep such references (runs) register them, so routing needs no import of theirs.
_referrers: list[Callable[[Any], QuerySet[Any]]] = []


def referrer_register(referrer) -> None:
    if referrer not in _referrers:
        _referrers.append(referrer)


def _referencing(obj) -> list:
    return [rows for rows in (referrer(obj) for referrer in _referrers) if rows.exists()]


def deletion_refusal(obj) -> str | None:
    """Why `obj` may not be deleted, or None."""
    if not _referencing(obj):
        return None
    remedy = (
        "deactivate it instead"
        if isinstance(obj, CatalogModel)
        else "move its users to another tier and keep it"
    )
    return (
        f"{obj._meta.verbose_name} {obj.pk}: runs were admitted under it, so it is billing history; {remedy}."
    )


@receiver(pre_delete, sender=Tier)
@receiver(pre_delete, sender=CatalogModel)
def refuse_deleting_referenced_rows(sender, instance, **kwargs):
    refusal = deletion_refusal(instance)
    if refusal:
        raise ProtectedError(refusal, {row for rows in _referencing(instance) for row in rows[:5]})
