"""CONTRACT section 14: slow or stalled clients (a request trickling in byte by byte) never hold up
other clients' requests. The recommended deployment, the ASGI app under uvicorn (one process), with
50 raw sockets trickling their headers or bodies a byte at a time while other requests are timed."""

import socket
import tempfile
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from .processes import manage, stack_env, start_uvicorn, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def trickle(url, stop: threading.Event, body: bool, opened: list):
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    opened.append(sock)
    if body:  # whole headers, then a body that never finishes
        sock.sendall(
            b"POST /api/v1/agents HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        pending = b"{" + b" " * 99_999
    else:  # headers that never end
        pending = b"GET /api/v1/tiers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    for byte in pending:
        if stop.wait(0.2):
            break
        try:
            sock.send(bytes([byte]))
        except OSError:
            break


def test_slow_clients_do_not_hold_up_other_requests(catalog):
    env = stack_env(broker_url="memory://")
    manage(env, "set_tier", "bob", "m1")
    key = manage(env, "create_api_key", "bob").strip().splitlines()[-1]
    log_dir = tempfile.mkdtemp(prefix="maschina-slow-logs-")
    web, url = start_uvicorn(env, log_dir, workers=1)
    stop, opened = threading.Event(), []
    threads = [
        threading.Thread(target=trickle, args=(url, stop, i % 5 == 0, opened), daemon=True) for i in range(50)
    ]
    try:
        wait_http(url + "/healthz", [web])
        for thread in threads:
            thread.start()
        time.sleep(2)  # every slow client connected and trickling
        assert len(opened) == 50
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        timings = []
        for i in range(30):
            started = time.monotonic()
            if i % 3 == 0:
                response = session.post(f"{url}/api/v1/agents", json={"name": f"a{i}"}, timeout=5)
                assert response.status_code == 201, response.text
            else:
                response = requests.get(  # a new connection each
                    f"{url}/api/v1/tiers", headers={"Authorization": f"Bearer {key}"}, timeout=5
                )
                assert response.status_code == 200, response.text
            timings.append(time.monotonic() - started)
            time.sleep(0.1)
        assert max(timings) < 1.0, timings
        assert all(thread.is_alive() for thread in threads)  # the slow clients were still at it
    finally:
        stop.set()
        for sock in opened:
            sock.close()
        web.stop()
