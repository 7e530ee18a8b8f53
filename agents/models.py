import uuid

from django.conf import settings
from django.db import models


class Agent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own on a foreign key that leads a composite index: that one serves its lookups,
    # and every index is one more write on each INSERT and non-HOT UPDATE (tests/test_schema.py).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents", db_index=False
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    system_prompt = models.TextField(blank=True, default="")
    model = models.CharField(
        max_length=200, null=True, blank=True, help_text="Empty: the tier's default model."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self):
        return self.name
