"""The runs this worker process holds, watched together.

A run waiting on its provider needs a heartbeat (so the sweeper does not take it for dead) and must
notice a cancel or a takeover. Rather than each run writing its own heartbeat, one round per
CANCEL_POLL_SECS does it for all the runs of the process: one read finds the runs that were canceled
or taken over, and one UPDATE heartbeats the rest, in every round that comes a sixth of
HEARTBEAT_STALE_SECS after the last heartbeat (a claim sets the first). The database's load then
grows with worker processes, not with the runs they hold.

The rounds are taken by whichever thread does the runs' database work when one is due
(watch_if_due): a thread of the process's own, prompted by the provider loop (runs.execution), or
the thread of a run executed in-process, on its own connection, so that run sees what its caller's
transaction sees. A round that finds a run no longer ours, or past its deadline, wakes it (its
`wake`)."""

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from maschina.db import release_connection

from .services import claim_state, runs_claims, runs_heartbeat

logger = logging.getLogger(__name__)


class Held:
    """One run this process holds: its claim, what the last round found (ok, canceled, lost), and when
    a round wakes it as past its deadline."""

    __slots__ = ("deadline", "state", "token", "wake")

    def __init__(self, token: uuid.UUID, wake: Callable[[], None], deadline: float):
        self.token = token
        self.state = "ok"
        self.wake = wake  # from any thread: whoever waits on the run looks again
        self.deadline = deadline  # time.time()


_held: dict[uuid.UUID, Held] = {}
_lock = threading.Lock()
_round = threading.Lock()
_last_round = 0.0  # time.monotonic() of the last round
_last_heartbeat = 0.0  # and of the last round that heartbeat


def hold(run_id: uuid.UUID, token: uuid.UUID, wake: Callable[[], None], deadline: float = math.inf) -> Held:
    """Watch this run while this process holds it with `token`; release() it when done."""
    held = Held(token, wake, deadline)
    with _lock:
        _held[run_id] = held
    return held


def release(run_id: uuid.UUID) -> None:
    with _lock:
        _held.pop(run_id, None)


def held_count() -> int:
    return len(_held)


def watch_once(heartbeat: bool = True) -> None:
    """One round: wake the held runs past their deadlines, find the ones no longer ours, and heartbeat
    the others if `heartbeat`."""
    with _lock:
        items = list(_held.items())
    if not items:
        return
    now = time.time()
    for _, held in items:
        if held.deadline < now:
            held.wake()
    found = runs_claims([run_id for run_id, _ in items])
    ours = []
    for run_id, held in items:
        status, claim = found.get(run_id, (None, None))
        state = claim_state(status, claim, held.token)
        if state == "ok":
            ours.append(run_id)
        elif held.state == "ok":
            held.state = state
            held.wake()
    if ours and heartbeat:
        runs_heartbeat(ours)


def watch_if_due(prompted: bool = False) -> None:
    """Take the round if it is due and no other thread is taking it. A round `prompted` by the loop,
    which prompts one every CANCEL_POLL_SECS, is due a little early, so that a prompt arriving early
    does not skip an interval."""
    global _last_round, _last_heartbeat
    interval = settings.CANCEL_POLL_SECS * (0.5 if prompted else 1)
    if time.monotonic() - _last_round < interval or not _round.acquire(blocking=False):
        return
    try:
        if time.monotonic() - _last_round < interval:
            return
        _last_round = now = time.monotonic()
        heartbeat = now - _last_heartbeat >= settings.HEARTBEAT_STALE_SECS / 6
        if heartbeat:
            _last_heartbeat = now
        watch_once(heartbeat)
    except (OperationalError, InterfaceError) as exc:
        # Cannot tell: the runs keep waiting on their providers, whose answers matter most.
        logger.warning("runs watch: database unavailable (%s)", exc.__class__.__name__)
        connection.close()
    finally:
        _round.release()
        release_connection()
