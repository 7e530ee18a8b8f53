"""Billing periods are UTC calendar months, named by their first day."""

import datetime as dt

UTC = dt.UTC


def period_of(moment: dt.datetime) -> dt.date:
    moment = moment.astimezone(UTC)
    return dt.date(moment.year, moment.month, 1)


def period_start(period: dt.date) -> dt.datetime:
    return dt.datetime(period.year, period.month, 1, tzinfo=UTC)


def period_end(period: dt.date) -> dt.datetime:
    """The first instant of the next month: when the quota resets."""
    year, month = (period.year + 1, 1) if period.month == 12 else (period.year, period.month + 1)
    return dt.datetime(year, month, 1, tzinfo=UTC)


def parse_period(text: str) -> dt.date:
    """'YYYY-MM' -> the period; ValueError otherwise."""
    year, _, month = text.partition("-")
    if (
        len(year) != 4
        or len(month) != 2
        or not (text.isascii() and year.isdigit() and month.isdigit())
        or not 1970 <= int(year) <= 9998
    ):
        raise ValueError(text)
    return dt.date(int(year), int(month), 1)
