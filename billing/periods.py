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


# What parse_period takes, for the schema: years 1970-9998, months 01-12.
PERIOD_PATTERN = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"


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
