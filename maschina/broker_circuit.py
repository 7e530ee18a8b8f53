"""A circuit breaker in front of the broker, one per process.

A publish to a broker that is down waits on kombu's connection retries (seconds) before it fails,
and every admission and health check would wait the same. After one failure the circuit opens:
publishes are skipped at once (the run stays queued, never published, and the sweeper dispatches
it), health checks report the broker down without trying it, and a background thread probes the
broker every BROKER_PROBE_SECS with a single connection attempt, closing the circuit when it
answers. The probe runs off the request path, so no request ever pays for it."""

import logging
import threading
import time

from django.conf import settings
from kombu.exceptions import KombuError

from .broker import RedisError

logger = logging.getLogger(__name__)


def broker_reachable(timeout: float) -> bool:
    """One connection attempt to the broker, no retries, at most about `timeout` seconds."""
    from .celery import app

    try:
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=0, timeout=timeout)  # type: ignore[arg-type]  # kombu takes seconds as a float
        return True
    except (KombuError, RedisError, OSError):
        return False


class BrokerCircuit:
    def __init__(self):
        self._lock = threading.Lock()
        self._open = False
        self._prober: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return self._open

    def failed(self) -> None:
        """A publish or a check failed: open the circuit and start probing, if not already."""
        with self._lock:
            if not self._open:
                logger.warning("broker unreachable: publishing paused, probing every %ss", self.probe_secs)
            self._open = True
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe, name="broker-probe", daemon=True)
                self._prober.start()

    def succeeded(self) -> None:
        if self._open:
            logger.warning("broker reachable again: publishing resumed")
        self._open = False

    @property
    def probe_secs(self) -> float:
        return settings.BROKER_PROBE_SECS

    def _probe(self) -> None:
        while self._open:
            time.sleep(self.probe_secs)
            if broker_reachable(timeout=self.probe_secs):
                self.succeeded()


broker_circuit = BrokerCircuit()
