import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from agents.models import Agent


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.EXECUTING)
TERMINAL_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELED)


class Run(models.Model):
    """One execution of an agent. Its life: queued -> executing -> a terminal status, each step a
    conditional UPDATE (runs.services), so concurrent deliveries and cancels cannot both win."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by (user, -created_at) and (agent, -created_at) below, not on their own: a run row is
    # written three times (admission, claim, settlement), each write into every index.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs", db_index=False
    )
    # A deleted agent keeps its runs: they are billing history.
    agent = models.ForeignKey(
        Agent, on_delete=models.SET_NULL, null=True, related_name="runs", db_index=False
    )
    # The API key that admitted the run (CONTRACT section 10); a key is revoked, not deleted, so this
    # only goes null when its user is removed.
    key = models.ForeignKey(
        "accounts.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="runs",
        db_index=False,
    )
    # CONTRACT section 12: the client's Idempotency-Key, unique per user, and a digest of the agent
    # and body it came with. Cleared after IDEMPOTENCY_SECS so the key may be used again.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_digest = models.CharField(max_length=64, blank=True, default="")
    tier = models.CharField(max_length=32)  # the caller's tier at admission, for fallback decisions
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    requested_model = models.CharField(max_length=200, null=True, blank=True)
    model = models.CharField(max_length=200)  # the model that runs (after any fallback)
    catalog_model = models.CharField(max_length=200)  # its catalog row (a pattern row for ollama/<any>)
    provider = models.CharField(max_length=32)
    # The multiplier this run is billed at: its catalog row's, copied when the model was chosen.
    multiplier = models.DecimalField(max_digits=12, decimal_places=4)
    system_prompt = models.TextField()
    input = models.JSONField()
    output = models.JSONField(null=True, blank=True)
    timeout_secs = models.PositiveIntegerField()
    max_tokens = models.PositiveIntegerField()
    period = models.DateField()  # the UTC month of creation, which the run is billed to
    reserved_tokens = models.BigIntegerField()
    # Raw provider usage, stored before settlement so a redelivery never calls the provider again.
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    billed_tokens = models.BigIntegerField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    provider_calls = models.PositiveIntegerField(default=0)
    # The current claim of a worker on the run and its last sign of life (runs.services).
    claim = models.UUIDField(null=True, blank=True, editable=False)
    claims = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)  # first start + timeout_secs
    dispatches = models.PositiveIntegerField(default=0)  # publishes of its task
    redispatch_at = models.DateTimeField(null=True, blank=True)  # when the sweeper may publish it again
    # Set by the service from the same instant as `period`, so a run at 23:59:59 bills the right month.
    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "agents_run"  # the table predates the runs app, which took it over as it was
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["agent", "-created_at"]),
            models.Index(fields=["key", "-created_at"]),
            models.Index(
                fields=["status", "created_at"],
                name="run_active_idx",
                condition=Q(status__in=ACTIVE_STATUSES),
            ),
            models.Index(
                fields=["redispatch_at"], name="run_queued_redispatch_idx", condition=Q(status="queued")
            ),
            models.Index(
                fields=["deadline_at"], name="run_executing_deadline_idx", condition=Q(status="executing")
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                name="one_run_per_idempotency_key",
                condition=Q(idempotency_key__isnull=False),
            ),
            models.CheckConstraint(name="run_status_known", condition=Q(status__in=RunStatus.values)),
            models.CheckConstraint(name="run_multiplier_gte_0", condition=Q(multiplier__gte=0)),
            models.CheckConstraint(name="run_reserved_gte_0", condition=Q(reserved_tokens__gte=0)),
            models.CheckConstraint(
                name="run_usage_gte_0",
                condition=(Q(input_tokens__gte=0) | Q(input_tokens__isnull=True))
                & (Q(output_tokens__gte=0) | Q(output_tokens__isnull=True))
                & (Q(billed_tokens__gte=0) | Q(billed_tokens__isnull=True)),
            ),
            # A settled run is terminal: settlement happens once, at or after the end.
            models.CheckConstraint(
                name="run_settled_only_when_terminal",
                condition=Q(settled_at__isnull=True) | Q(status__in=TERMINAL_STATUSES),
            ),
        ]

    def __str__(self):
        return str(self.id)

    @property
    def is_terminal(self):
        return self.status in TERMINAL_STATUSES


class RunEvent(models.Model):
    """One event of a run's stream (CONTRACT section 9), where the events have no Redis to go to:
    the embedded default. `seq` is the event's id within its run; the table's own id orders all
    events, so a web process polls for every new event of the runs it streams in one query."""

    run_id = models.UUIDField()
    seq = models.PositiveIntegerField()
    event = models.CharField(max_length=16)
    data = models.TextField()  # the event's JSON, as sent
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run_id", "seq"], name="run_event_seq_unique")]
        indexes = [models.Index(fields=["created_at"], name="run_event_created_idx")]

    def __str__(self):
        return f"{self.run_id} #{self.seq} {self.event}"
