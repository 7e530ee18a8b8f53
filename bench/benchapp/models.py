from django.db import models


class BenchRow(models.Model):
    """The one row the baseline endpoint inserts per request."""

    user_id = models.BigIntegerField()
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return str(self.pk)
