"""The runs this worker process holds, watched together.

A run waiting on its provider needs a heartbeat (so the sweeper does not take it for dead) and must
notice a cancel or a takeover. Rather than each run writing its own heartbeat, one round per
CANCEL_POLL_SECS does it for all the runs of the process: one read finds the runs that were canceled
or taken over, and one UPDATE heartbeats the rest, in every round that comes a sixth of
HEARTBEAT_STALE_SECS after the last heartbeat (a claim sets the first). The database's load then
grows with worker processes, not with the runs they hold, and a waiting run holds no database
connection.

The round is taken by a waiting thread that finds it due (watch_if_due), on that thread's own
connection, so there is no thread to keep alive and a run executed in-process sees what its caller's
transaction sees. One waiting run at a time, the watcher, wakes every CANCEL_POLL_SECS for it
(poll_step); the others sleep until a round, their answer or their deadline wakes them, so a
thousand waiting runs cost a few wake-ups a second rather than thousands. A watcher that stops
waiting hands the rounds to another waiting run (stop_waiting)."""

import logging
import threading
import time
import uuid

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from maschina.db import release_connection

from .services import claim_state, runs_claims, runs_heartbeat

logger = logging.getLogger(__name__)


class Held:
    """One run this process holds: its claim, and what the watcher last found (ok, canceled, lost).
    `changed` is set when that changes, or when whoever waits on the run should look again."""

    __slots__ = ("changed", "state", "token", "waiting")

    def __init__(self, token: uuid.UUID):
        self.token = token
        self.state = "ok"
        self.changed = threading.Event()
        self.waiting = False  # its thread is waiting (on its provider, or a backoff)


_held: dict[uuid.UUID, Held] = {}
_lock = threading.Lock()
_watcher: Held | None = None  # the waiting run whose thread wakes for the rounds
_round = threading.Lock()
_last_round = 0.0  # time.monotonic() of the last round
_last_heartbeat = 0.0  # and of the last round that heartbeat


def hold(run_id: uuid.UUID, token: uuid.UUID) -> Held:
    """Watch this run while this process holds it with `token`; release() it when done."""
    held = Held(token)
    with _lock:
        _held[run_id] = held
    return held


def release(run_id: uuid.UUID) -> None:
    with _lock:
        _held.pop(run_id, None)


def poll_step(held: Held) -> float | None:
    """How long `held`'s waiting thread may sleep before it looks for a due round: until the next
    round is due if it is the process's watcher (it becomes one if there is none), else None: a
    round that finds its run canceled or taken over wakes it. The watcher sleeps at least a tenth
    of the interval, so it does not spin while another thread takes a slow round."""
    global _watcher
    with _lock:
        held.waiting = True
        if _watcher is None:
            _watcher = held
        if _watcher is not held:
            return None
    interval = settings.CANCEL_POLL_SECS
    return max(_last_round + interval - time.monotonic(), interval / 10)


def stop_waiting(held: Held) -> None:
    """`held`'s thread no longer waits: if it was the watcher, another waiting run becomes it and is
    woken to take the rounds."""
    global _watcher
    with _lock:
        held.waiting = False
        if _watcher is not held:
            return
        _watcher = next((other for other in _held.values() if other.waiting), None)
        successor = _watcher
    if successor is not None:
        successor.changed.set()


def held_count() -> int:
    return len(_held)


def watch_once(heartbeat: bool = True) -> None:
    """One round: find the held runs no longer ours, and heartbeat the others if `heartbeat`."""
    with _lock:
        items = list(_held.items())
    if not items:
        return
    found = runs_claims([run_id for run_id, _ in items])
    ours = []
    for run_id, held in items:
        status, claim = found.get(run_id, (None, None))
        state = claim_state(status, claim, held.token)
        if state == "ok":
            ours.append(run_id)
        elif held.state == "ok":
            held.state = state
            held.changed.set()
    if ours and heartbeat:
        runs_heartbeat(ours)


def watch_if_due() -> None:
    """Take the round if it is due and no other thread is taking it."""
    global _last_round, _last_heartbeat
    if time.monotonic() - _last_round < settings.CANCEL_POLL_SECS or not _round.acquire(blocking=False):
        return
    try:
        if time.monotonic() - _last_round < settings.CANCEL_POLL_SECS:
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
