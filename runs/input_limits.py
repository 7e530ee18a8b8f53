"""How much a run's `input` may hold besides its message (CONTRACT section 14): at most 16 KiB as
JSON. The extra keys are stored with the run and sent back in every list of runs, so without a
bound a client could make each run a megabyte that no quota counts."""

import json

MAX_INPUT_EXTRAS_BYTES = 16 * 1024


def input_extras_too_long(input: dict) -> bool:
    """Whether `input` without its `message` is over the bound, as compact UTF-8 JSON."""
    if len(input) <= 1:  # the message alone, the common case
        return False
    extras = {k: v for k, v in input.items() if k != "message"}
    return (
        len(json.dumps(extras, ensure_ascii=False, separators=(",", ":")).encode()) > MAX_INPUT_EXTRAS_BYTES
    )
