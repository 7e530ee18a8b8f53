"""The hand-written SQL of a run's hot path (PostgreSQL only; SQLite takes the ORM's way).

Written out as PostgreSQL runs it, with the real names; tests/golden_sql/ holds the rendered text
and tests/test_statements.py compares it. Every write of the run table is here or in runs.services."""

import functools

from billing import statements as billing
from maschina.db.rows import rows_of

from .models import Run


@functools.cache
def claim_queued() -> str:
    """queued -> executing for a message that says the run's timeout (admission's): the deadline is
    computed by the caller, and the UPDATE matches only a queued run with that timeout. It counts
    the provider call that follows, and returns the claimed row."""
    return f"""
UPDATE agents_run
   SET status = 'executing',
       started_at = %(now)s,
       deadline_at = %(deadline_at)s,
       heartbeat_at = %(now)s,
       claim = %(claim)s,
       claims = claims + 1,
       provider_calls = provider_calls + 1
 WHERE id = %(id)s
   AND status = 'queued'
   AND timeout_secs = %(timeout_secs)s
RETURNING {rows_of(Run).columns()}
"""


# What a settling UPDATE returns: the columns billing.statements.SETTLEMENT_WRITES reads as `done`.
SETTLED_RUN = """id AS run_id, user_id, agent_id, key_id, created_at, period, model, input_tokens,
          output_tokens, multiplier, billed_tokens, reserved_tokens, settled_at"""

# The provider answered: the run ends completed, with its answer and its bill, and is settled, in one
# statement. Only while this claim holds the run and nothing was recorded yet, and only at the model
# and multiplier the claim last switched to.
COMPLETE = billing.settlement(f"""
UPDATE agents_run
   SET status = 'completed',
       output = %(output)s,
       input_tokens = %(input_tokens)s,
       output_tokens = %(output_tokens)s,
       billed_tokens = %(billed_tokens)s,
       finished_at = %(now)s,
       settled_at = %(now)s
 WHERE id = %(id)s
   AND status = 'executing'
   AND claim = %(claim)s
   AND input_tokens IS NULL
   AND model = %(model)s
   AND multiplier = %(multiplier)s
RETURNING {SETTLED_RUN}
""")
