from django.db import transaction
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from . import snapshot
from .models import CatalogModel, RulesRevision, Tier, TierModelRule


@receiver([post_save, post_delete], sender=Tier)
@receiver([post_save, post_delete], sender=CatalogModel)
@receiver([post_save, post_delete], sender=TierModelRule)
def bump_rules_revision(sender, **kwargs):
    # Raw saves (loaddata) too: a fixture can change a multiplier as well as the admin can.
    # In the writer's transaction: other processes see the new revision exactly when they can see the rows.
    if not RulesRevision.objects.filter(pk=1).update(value=F("value") + 1):
        RulesRevision.objects.get_or_create(pk=1, defaults={"value": 1})
    transaction.on_commit(snapshot.invalidate)
