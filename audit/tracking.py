"""What makes a model audited: inherit AuditedModel. Every save, delete and QuerySet.update() of it is
then recorded by audit.recorder, in the same transaction as the change."""
from django.db import models, transaction
from django.db.models.signals import post_save, pre_save


class AuditedQuerySet(models.QuerySet):
    def update(self, **kwargs):
        """A bulk update is recorded row by row, like saves: the same signals, in one transaction, so
        every receiver (the audit, the rules revision) sees it."""
        fields = frozenset(kwargs)
        with transaction.atomic(using=self.db):
            rows = list(self.select_for_update())
            for row in rows:
                pre_save.send(sender=self.model, instance=row, raw=False, using=self.db, update_fields=fields)
            count = super().update(**kwargs)
            for row in rows:
                row.refresh_from_db(using=self.db)
                post_save.send(sender=self.model, instance=row, created=False, raw=False, using=self.db, update_fields=fields)
        return count

    update.queryset_only = True


class AuditedModel(models.Model):
    # Fields whose values are secrets: recorded as a fingerprint, so a rotation shows but the value never does.
    audit_masked_fields: tuple[str, ...] = ()
    # Fields that change on every save and say nothing about the change (timestamps).
    audit_ignored_fields: tuple[str, ...] = ()

    objects = AuditedQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        # The change and its record commit together or not at all.
        with transaction.atomic(using=kwargs.get("using")):
            super().save(*args, **kwargs)
