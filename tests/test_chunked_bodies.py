"""CONTRACT section 14: a body sent with `Transfer-Encoding: chunked` is read like any other (413 past
1 MiB), never taken as empty; under the ASGI server of the recommended deployment (uvicorn) and
under a WSGI server (gunicorn). Raw sockets, so the body really goes chunked."""

import json
import socket
import tempfile
from urllib.parse import urlsplit

import pytest

from agents.models import Agent

from .processes import manage, stack_env, start_gunicorn, start_uvicorn, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def chunked_request(url, method, path, body: bytes, key, chunk=4096) -> tuple[int, dict]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        try:
            for start in range(0, len(body), chunk):
                piece = body[start : start + chunk]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed before the whole body went
            pass
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        payload = _dechunk(payload)
    return status, json.loads(payload)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2 :]
    return out


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_chunked_bodies_are_read_like_any_other(catalog, server):
    env = stack_env(broker_url="memory://")
    manage(env, "set_tier", "bob", "m1")
    key = manage(env, "create_api_key", "bob").strip().splitlines()[-1]
    log_dir = tempfile.mkdtemp(prefix="maschina-chunked-logs-")
    web, url = (start_uvicorn if server == "uvicorn" else start_gunicorn)(env, log_dir, workers=1)
    try:
        wait_http(url + "/healthz", [web])
        status, agent = chunked_request(url, "POST", "/api/v1/agents", b'{"name": "first"}', key)
        assert status == 201, agent
        assert agent["name"] == "first"

        patch = json.dumps({"name": "renamed", "description": "x" * 10_000}).encode()
        status, patched = chunked_request(url, "PATCH", f"/api/v1/agents/{agent['id']}", patch, key, chunk=7)
        assert status == 200, patched
        saved = Agent.objects.get(pk=agent["id"])
        assert (saved.name, saved.description, patched["name"]) == ("renamed", "x" * 10_000, "renamed")

        big = json.dumps({"name": "big", "description": "y" * (2 * 1024 * 1024)}).encode()
        status, refused = chunked_request(url, "PATCH", f"/api/v1/agents/{agent['id']}", big, key, 65536)
        assert (status, refused["error"]["code"]) == (413, "payload_too_large")
        assert Agent.objects.get(pk=agent["id"]).name == "renamed"

        run_body = json.dumps({"input": {"message": "hi", "notes": "n" * 5000}}).encode()
        status, run = chunked_request(url, "POST", f"/api/v1/agents/{agent['id']}/run", run_body, key, 100)
        assert status == 202, run
        assert run["input"] == {"message": "hi", "notes": "n" * 5000}

        # Unauthenticated: the 401 still comes first, as JSON.
        status, body = chunked_request(url, "PATCH", f"/api/v1/agents/{agent['id']}", big, "nope", 65536)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    finally:
        web.stop()
