"""Usage history (CONTRACT section 13): per-day usage lines, counted as runs are admitted and billed,
and summed over a date range. A range's cost is the number of lines in it, never the ledger's size."""

import datetime as dt
import re
import uuid
from dataclasses import dataclass

from django.db.models import F, Sum

from .models import NO_ID, UsageDay

MAX_DAYS = 366
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
GROUPS = ("day", "model", "agent", "key")
FIGURES = ("runs", "input_tokens", "output_tokens", "billed_tokens")
_COLUMN = {"day": "day", "model": "model", "agent": "agent_id", "key": "key_id"}


@dataclass(frozen=True)
class UsageLine:
    """Which usage line a run counts on: its creation day, model, agent and key."""

    day: dt.date
    model: str
    agent_id: uuid.UUID | None
    key_id: uuid.UUID | None

    @classmethod
    def of(cls, *, created_at: dt.datetime, model: str, agent_id, key_id) -> "UsageLine":
        return cls(created_at.astimezone(dt.UTC).date(), model, agent_id, key_id)

    def columns(self) -> dict:
        return {
            "day": self.day,
            "model": self.model,
            "agent_id": self.agent_id or NO_ID,
            "key_id": self.key_id or NO_ID,
        }

    def statement_params(self) -> dict:
        """The parameters of billing.statements.USAGE_DAY_COUNT."""
        columns = self.columns()
        return {
            "day": columns["day"],
            "day_model": columns["model"],
            "day_agent_id": columns["agent_id"],
            "day_key_id": columns["key_id"],
        }


def usage_day_add(user_id: int, line: UsageLine, **figures: int) -> None:
    """The ORM's way of adding to a usage line (the statements' ON CONFLICT ... DO UPDATE), inside
    the caller's transaction."""
    where = {"user_id": user_id, **line.columns()}
    UsageDay.objects.bulk_create([UsageDay(**where)], ignore_conflicts=True)  # the line's first run
    UsageDay.objects.filter(**where).update(**{name: F(name) + value for name, value in figures.items()})


class BadRange(ValueError):
    def __init__(self, fields: dict[str, list[str]]):
        super().__init__("bad usage history range")
        self.fields = fields


def parse_range(
    raw_from: str | None, raw_to: str | None, group_by: str | None, today: dt.date
) -> tuple[dt.date, dt.date, str]:
    """The query of GET /usage/history, or BadRange naming each bad field."""
    fields: dict[str, list[str]] = {}
    dates = {}
    for name, raw, default in (("from", raw_from, today.replace(day=1)), ("to", raw_to, today)):
        if raw is None:
            dates[name] = default
            continue
        try:
            if not _DATE.fullmatch(raw):  # fromisoformat alone also takes week dates (2026-W49-1)
                raise ValueError(raw)
            dates[name] = dt.date.fromisoformat(raw)
        except ValueError:
            fields[name] = ["Must be a date as YYYY-MM-DD."]
    group = "day" if group_by is None else group_by
    if group not in GROUPS:
        fields["group_by"] = [f"Must be one of: {', '.join(GROUPS)}."]
    if not fields:
        days = (dates["to"] - dates["from"]).days + 1
        if days < 1:
            fields["to"] = ["Must not be before from."]
        elif days > MAX_DAYS:
            fields["to"] = [f"The range is at most {MAX_DAYS} days."]
    if fields:
        raise BadRange(fields)
    return dates["from"], dates["to"], group


def usage_history(*, user_id: int, start: dt.date, end: dt.date, group_by: str) -> list[dict]:
    """The user's usage lines from `start` to `end` (inclusive) summed by `group_by`, ordered by it."""
    column = _COLUMN[group_by]
    rows = (
        UsageDay.objects.filter(user_id=user_id, day__gte=start, day__lte=end)
        .values(column)
        .annotate(**{f"sum_{name}": Sum(name) for name in FIGURES})
        .order_by(column)
    )
    results = []
    for row in rows:
        group = row[column]
        if group_by == "day":
            group = group.isoformat()
        elif group_by in ("agent", "key"):
            group = None if group == NO_ID else str(group)
        results.append({group_by: group, **{name: row[f"sum_{name}"] for name in FIGURES}})
    if group_by in ("agent", "key"):  # the line without one (NO_ID) sorts first; put it last
        results.sort(key=lambda r: (r[group_by] is None, r[group_by] or ""))
    return results
