"""The append-only record of every change to what customers may run and what it costs.

Rows are only ever inserted: the model refuses updates and deletes, and a database trigger refuses them
from any other client too (migration 0001). `actor` is a string, not a foreign key, so the record
outlives the user who made the change."""

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class Source(models.TextChoices):
    ADMIN = "admin", "Admin"
    COMMAND = "command", "Management command"
    CODE = "code", "Code"


class Action(models.TextChoices):
    CREATE = "create", "Created"
    UPDATE = "update", "Updated"
    DELETE = "delete", "Deleted"


class AppendOnlyError(Exception):
    pass


class ChangeRecordQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Change records are append-only.")

    def delete(self):
        raise AppendOnlyError("Change records are append-only.")


class ChangeRecord(models.Model):
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=255)
    source = models.CharField(max_length=16, choices=Source.choices)
    object_type = models.CharField(max_length=64)  # "app_label.model"
    object_id = models.CharField(max_length=255)
    action = models.CharField(max_length=8, choices=Action.choices)
    before = models.JSONField(null=True, encoder=DjangoJSONEncoder)  # None on create
    after = models.JSONField(null=True, encoder=DjangoJSONEncoder)  # None on delete

    objects = ChangeRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object_idx")]
        constraints = [
            models.CheckConstraint(name="audit_source_known", condition=models.Q(source__in=Source.values)),
            models.CheckConstraint(name="audit_action_known", condition=models.Q(action__in=Action.values)),
        ]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type} {self.object_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Change records are append-only.")
        super().save(*args, **kwargs)

    @property
    def changed_fields(self) -> list[str]:
        before, after = self.before or {}, self.after or {}
        return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Change records are append-only.")
