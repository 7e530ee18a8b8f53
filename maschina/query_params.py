"""Numeric query parameters are ASCII digits only (CONTRACT section 14): Python's int() would also
take "٥", "+5", "1_0" and " 1", and a parameter given empty is not the same as one left out."""

import re

# Every numeric parameter's bound is far below this, and int() of a few thousand digits raises.
MAX_ASCII_INT = 10**18 - 1
_DIGITS = re.compile(r"0*([0-9]{1,18})")


def ascii_int(raw: str) -> int | None:
    """The value of a string of ASCII digits up to MAX_ASCII_INT, else None."""
    found = _DIGITS.fullmatch(raw)
    return int(found.group(1)) if found else None
