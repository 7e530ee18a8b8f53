"""What makes a model audited: inherit AuditedModel. Every save, delete, QuerySet.update() and
bulk_create() of it is then recorded by audit.recorder, in the same transaction as the change, and
sends the usual model signals, so other receivers (the rules revision) see it too."""

from collections.abc import Iterable
from typing import Any, TypeVar

from django.db import models, transaction
from django.db.models.signals import post_save, pre_save

_M = TypeVar("_M", bound="AuditedModel")


class AuditedQuerySet(models.QuerySet[_M, _M]):
    def update(self, **kwargs: Any) -> int:
        """Recorded row by row, like saves: the rows are locked and read, updated by primary key (so
        exactly the rows read), read again, and each gets its pre_save and post_save signals."""
        fields = frozenset(kwargs)
        base = self.model._base_manager.using(self.db)
        with transaction.atomic(using=self.db):
            # No joins (select_related, ordering by relations): lock this table's rows only.
            rows = list(self.select_related(None).order_by("pk").select_for_update(of=("self",)))
            for row in rows:
                pre_save.send(sender=self.model, instance=row, raw=False, using=self.db, update_fields=fields)
            by_pk = {row.pk: row for row in rows}
            count = base.filter(pk__in=by_pk).update(**kwargs)
            for fresh in base.filter(pk__in=by_pk):  # one read refreshes every row, in place
                row = by_pk[fresh.pk]
                for field in self.model._meta.concrete_fields:
                    setattr(row, field.attname, getattr(fresh, field.attname))
                post_save.send(
                    sender=self.model,
                    instance=row,
                    created=False,
                    raw=False,
                    using=self.db,
                    update_fields=fields,
                )
        return count

    # Read by as_manager(); mypy does not model attributes set on functions.
    update.queryset_only = True  # type: ignore[attr-defined]

    # update_fields and unique_fields go to **kwargs: they only matter with the refused conflict handling.
    def bulk_create(  # type: ignore[override]
        self,
        objs: Iterable[_M],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        **kwargs: Any,
    ) -> list[_M]:
        """One save per row, so each is recorded; conflict handling would bypass that and is refused."""
        if ignore_conflicts or update_conflicts:
            raise TypeError(
                "bulk_create with conflict handling is not audited; "
                f"save {self.model.__name__} rows one by one."
            )
        objs = list(objs)
        with transaction.atomic(using=self.db):
            for obj in objs:
                obj.save(force_insert=True, using=self.db)
        return objs

    bulk_create.queryset_only = True  # type: ignore[attr-defined]  # as for update()


class AuditedModel(models.Model):
    # Fields whose values are secrets: recorded as a fingerprint, so a rotation shows but the value
    # never does.
    audit_masked_fields: tuple[str, ...] = ()
    # URLs that may carry a token (webhooks): recorded as scheme and host plus a fingerprint of the rest.
    audit_masked_url_fields: tuple[str, ...] = ()
    # Fields that change on every save and say nothing about the change (timestamps).
    audit_ignored_fields: tuple[str, ...] = ()

    objects = AuditedQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        # The change and its record commit together or not at all.
        with transaction.atomic(using=kwargs.get("using")):
            super().save(*args, **kwargs)
