"""Writes a ChangeRecord for every change to an audited model (audit.tracking.AuditedModel)."""

import hashlib
import json
from decimal import Decimal
from urllib.parse import urlsplit

from django.apps import apps
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.signals import post_delete, post_save, pre_save

from .context import current
from .models import Action, ChangeRecord
from .tracking import AuditedModel


def _fingerprint(value) -> str:
    if not value:
        return ""
    return "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()[:12]


def _masked_url(value) -> str:
    if not value:
        return ""
    parts = urlsplit(str(value))
    return f"{parts.scheme}://{parts.hostname or ''}/… {_fingerprint(value)}"


def _plain(field, value):
    if value is not None and isinstance(field, models.DecimalField):
        # "2" from a form and "2.0000" from the database are the same multiplier.
        return format(Decimal(value).quantize(Decimal(1).scaleb(-field.decimal_places)), "f")
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def snapshot(instance, fields=None) -> dict:
    """The row as recorded: every concrete field (or those named in `fields`), secrets masked."""
    model = type(instance)
    data = {}
    for field in instance._meta.concrete_fields:
        named = fields is None or field.name in fields or field.attname in fields
        if field.name in model.audit_ignored_fields or not named:
            continue
        value = getattr(instance, field.attname)
        if field.name in model.audit_masked_fields:
            data[field.attname] = _fingerprint(value)
        elif field.name in model.audit_masked_url_fields:
            data[field.attname] = _masked_url(value)
        else:
            data[field.attname] = _plain(field, value)
    return data


def record(instance, before: dict | None, after: dict | None) -> ChangeRecord | None:
    if before == after:
        return None  # a save that changed nothing
    actor, source = current()
    action = Action.CREATE if before is None else Action.DELETE if after is None else Action.UPDATE
    return ChangeRecord.objects.create(
        actor=actor,
        source=source,
        object_type=instance._meta.label_lower,
        object_id=str(instance.pk),
        action=action,
        before=before,
        after=after,
    )


def _before_save(sender, instance, using, **kwargs):
    # Locked (saves are atomic, AuditedModel.save), so two concurrent saves cannot both record it as "before".
    rows = sender._base_manager.using(using).select_for_update(of=("self",)).filter(pk=instance.pk)
    old = rows.first() if instance.pk is not None else None
    instance._audit_before = snapshot(old) if old is not None else None


def _after_save(sender, instance, created, update_fields=None, **kwargs):
    before = instance.__dict__.pop("_audit_before", None)
    after = snapshot(instance)
    if before is not None and update_fields is not None:
        # Only those fields were written; the others of an in-memory object may be stale.
        after = {**before, **snapshot(instance, fields=set(update_fields))}
    record(instance, before, after)


def _after_delete(sender, instance, **kwargs):
    record(instance, snapshot(instance), None)


def connect() -> None:
    for model in apps.get_models():
        if issubclass(model, AuditedModel):
            pre_save.connect(_before_save, sender=model, dispatch_uid=f"audit-pre-{model._meta.label}")
            post_save.connect(_after_save, sender=model, dispatch_uid=f"audit-post-{model._meta.label}")
            post_delete.connect(_after_delete, sender=model, dispatch_uid=f"audit-delete-{model._meta.label}")
