"""Numeric query parameters are ASCII digits only (CONTRACT section 14): Python's int() would also
take "٥", "+5", "1_0" and " 1", and a parameter given empty is not the same as one left out."""

import re

_DIGITS = re.compile(r"[0-9]+")


def ascii_int(raw: str) -> int | None:
    """The value of a string of ASCII digits, else None."""
    return int(raw) if _DIGITS.fullmatch(raw) else None
