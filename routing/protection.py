"""Tiers and catalog rows that runs were admitted under are never deleted: runs keep the tier slug and
catalog id as text (they are billing history and must survive catalog edits), so the database cannot
PROTECT them itself. Deactivate a model, or stop assigning a tier, instead."""

from django.apps import apps
from django.db.models import ProtectedError, Q
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from .models import CatalogModel, Tier


def runs_referencing(obj):
    Run = apps.get_model("agents", "Run")
    if isinstance(obj, Tier):
        return Run.objects.filter(tier=obj.slug)
    # A run that fell back keeps the model it asked for in requested_model (or, when it used its
    # tier's default, nowhere but its tier), and its catalog_model moves to the fallback's row.
    return Run.objects.filter(Q(catalog_model=obj.id) | Q(requested_model=obj.id) | Q(model=obj.id))


def deletion_refusal(obj) -> str | None:
    """Why `obj` may not be deleted, or None."""
    if not runs_referencing(obj).exists():
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
        raise ProtectedError(refusal, set(runs_referencing(instance)[:5]))
