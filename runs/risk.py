"""Input risk checks run before a run is admitted (CONTRACT section 5, step 2).

Each pattern has a stable flag name returned to the client in `flags`. Matching is on a normalized
copy of the message (case folded, runs of white space collapsed), so spacing tricks do not slip by."""

import re

MAX_MESSAGE_CHARS = 100_000

RISK_PATTERNS = {
    "ignore_previous_instructions": re.compile(
        r"\bignore\s+(?:all\s+|any\s+|the\s+)?(?:of\s+)?(?:your\s+|the\s+)?(?:previous|prior|above|earlier|preceding)\s+instructions\b"
    ),
    "disregard_previous_instructions": re.compile(
        r"\bdisregard\s+(?:all\s+|any\s+|the\s+)?(?:of\s+)?(?:your\s+|the\s+)?(?:previous|prior|above|earlier|preceding)\s+instructions\b"
    ),
    "jailbreak_dan": re.compile(r"\byou\s+are\s+now\s+dan\b"),
    # rm -rf aimed at the root itself ("/", "/*"), not at a path below it.
    "destructive_command": re.compile(
        r"\brm\s+(?:-[a-z]*\s+)*-(?:rf|fr|r\s+-f|f\s+-r)\s+(?:--no-preserve-root\s+)?/(?![a-z0-9_.~-])"
    ),
    "credential_request": re.compile(
        r"\b(?:give|show|tell|reveal|print|send|share|leak|dump|list|display|output|expose|what\s+is|what's|what\s+are)\b"
        r"[^.?!\n]{0,60}?\b(?:api[\s_-]?keys?|passwords?|passwd|secret\s+keys?|access\s+tokens?|credentials)\b"
    ),
}

_SPACE = re.compile(r"\s+")


def risk_flags(message: str) -> list[str]:
    """The names of the risky patterns the message contains, in a stable order."""
    text = _SPACE.sub(" ", message.casefold())
    return [flag for flag, pattern in RISK_PATTERNS.items() if pattern.search(text)]
