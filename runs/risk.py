"""Input risk checks run before a run is admitted (CONTRACT section 5, step 2).

Each pattern has a stable flag name returned to the client in `flags`. Matching is on a normalized
copy of the message (CONTRACT section 14), so look-alike spellings do not slip by: NFKC (full-width
and styled letters), case folded, combining marks and format characters (zero-width spaces, joiners,
bidi controls) removed, Cyrillic and Greek look-alikes of Latin letters read as those letters, and
every run of white space, hyphens and underscores read as one space."""

import re
import unicodedata
from collections.abc import Callable

MAX_MESSAGE_CHARS = 100_000

# Cyrillic and Greek letters that Unicode's confusables data (UTS #39) lists as look-alikes of a
# lower-case Latin letter, after case folding. Only whole-letter look-alikes: enough to read an
# English phrase spelled with them, without transliterating other scripts.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k",
        "ӏ": "l", "м": "m", "п": "n", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t",
        "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "ү": "y", "ɡ": "g",
        # Greek
        "α": "a", "β": "b", "ϲ": "c", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
        "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w",
        # Latin letters outside ASCII that read as ASCII ones
        "ı": "i", "ȷ": "j", "ſ": "s", "ℓ": "l",
    }
)  # fmt: skip

_SEPARATORS = re.compile(r"[\s_\-‐‑‒–—―−]+")

_INSTRUCTIONS = (
    r"(?:all\s+|any\s+|the\s+)?(?:of\s+)?(?:your\s+|the\s+)?"
    r"(?:previous|prior|above|earlier|preceding)\s+instructions\b"
)

_PATTERNS = {
    "ignore_previous_instructions": re.compile(r"\bignore\s+" + _INSTRUCTIONS),
    "disregard_previous_instructions": re.compile(r"\bdisregard\s+" + _INSTRUCTIONS),
    # "DAN" also spelled out with dots or spaces between its letters.
    "jailbreak_dan": re.compile(r"\byou\s*(?:are|re|'re|’re)\s+now\s+d\W?\s?a\W?\s?n\b"),
    "credential_request": re.compile(
        r"\b(?:give|show|tell|reveal|print|send|share|leak|dump|list|display|output|expose|what\s+is|what's|what\s+are)\b"
        r"[^.?!\n]{0,60}?\b(?:api\s?keys?|passwords?|passwd|secret\s+keys?|access\s+tokens?|credentials)\b"
    ),
}

# rm with options aimed at the root itself ("/", "/*"), not at a path below it. On the normalized
# text the options' hyphens are spaces: "rm -rf /" reads "rm rf /", "rm --recursive --force /"
# reads "rm recursive force /".
_RM = re.compile(r"\brm((?:\s+[a-z]+){1,8})\s+/\*?(?![a-z0-9_.~/])")
_RM_LONG = {"recursive": "r", "force": "f"}
_RM_OTHER_WORDS = {"no", "preserve", "root", "verbose", "one", "file", "system", "dir"}


def normalized(message: str) -> str:
    """The message as the checks read it."""
    if message.isascii():  # the common case: nothing to normalize but case and separators
        return _SEPARATORS.sub(" ", message.lower())
    text = unicodedata.normalize("NFKC", message).casefold()
    text = "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) not in ("Mn", "Me", "Cf")
    )
    text = unicodedata.normalize("NFC", text).translate(_CONFUSABLES)
    return _SEPARATORS.sub(" ", text)


def _destructive_command(text: str) -> bool:
    for match in _RM.finditer(text):
        flags = set()
        for word in match.group(1).split():
            if word in _RM_LONG:
                flags.add(_RM_LONG[word])
            elif set(word) <= set("rfvid"):
                flags.update(word)
            elif word not in _RM_OTHER_WORDS:
                break
        else:
            if {"r", "f"} <= flags:
                return True
    return False


RISK_CHECKS: dict[str, Callable[[str], object]] = {
    "ignore_previous_instructions": _PATTERNS["ignore_previous_instructions"].search,
    "disregard_previous_instructions": _PATTERNS["disregard_previous_instructions"].search,
    "jailbreak_dan": _PATTERNS["jailbreak_dan"].search,
    "destructive_command": _destructive_command,
    "credential_request": _PATTERNS["credential_request"].search,
}


def risk_flags(message: str) -> list[str]:
    """The names of the risky patterns the message contains, in a stable order."""
    text = normalized(message)
    return [flag for flag, check in RISK_CHECKS.items() if check(text)]
