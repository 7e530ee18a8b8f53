"""Loopback HTTP emulators of the providers: Anthropic's POST /v1/messages and Ollama's POST /api/chat.

They are real HTTP servers, so the runners go through the real anthropic SDK and requests. Each
answers from a script: queued replies per model (consumed in order), else the default reply."""

import json
import random
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: dict | None = None  # None: the emulator's success body
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    usage: dict | None = None  # overrides the default usage of a success body


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of runs connect at once in the in-flight tests


class Emulator:
    def __init__(self, name):
        self.name = name
        self.calls = []  # (path, request json, headers)
        self.script = defaultdict(deque)
        self.default_usage = {}
        self.fail_rate = 0.0  # share of unscripted calls answered with fail_reply
        self.fail_reply = None
        self.delay = 0.0  # delay of unscripted successful calls
        self._rng = random.Random(31)
        self._lock = threading.Lock()
        self.in_flight = 0  # requests being answered now, and the most at once since reset()
        self.peak_in_flight = 0
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self):
        with self._lock:
            self.calls.clear()
            self.script.clear()
            self.default_usage = {}
            self.fail_rate, self.fail_reply, self.delay = 0.0, None, 0.0
            self.peak_in_flight = self.in_flight
            self._rng = random.Random(31)

    def queue(self, model, *replies):
        with self._lock:
            self.script[model].extend(replies)

    def calls_for(self, model):
        return [c for c in self.calls if c[1].get("model") == model]

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _next_reply(self, model):
        with self._lock:
            for key in (model, "*"):
                if self.script.get(key):
                    return self.script[key].popleft()
            if self.fail_rate and self._rng.random() < self.fail_rate:
                return self.fail_reply
        return Reply(delay=self.delay)

    def _handler(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                try:
                    payload = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    payload = {}
                with emulator._lock:
                    emulator.calls.append(
                        (self.path, payload, {k.lower(): v for k, v in self.headers.items()})
                    )
                if self.path != emulator.path:
                    return self._send(404, {"error": f"no route {self.path}"})
                reply = emulator._next_reply(payload.get("model"))
                with emulator._lock:
                    emulator.in_flight += 1
                    emulator.peak_in_flight = max(emulator.peak_in_flight, emulator.in_flight)
                try:
                    if reply.delay:
                        time.sleep(reply.delay)
                    body = reply.body if reply.body is not None else emulator.success(payload, reply.usage)
                    self._send(reply.status, body, reply.headers)
                finally:
                    with emulator._lock:
                        emulator.in_flight -= 1

            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout or a cancel): what we are testing

        return Handler


ANTHROPIC_USAGE = {
    "input_tokens": 20,
    "output_tokens": 30,
    "cache_creation_input_tokens": 5,
    "cache_read_input_tokens": 7,
}


def anthropic_message(payload, usage=None):
    """The Messages API's answer to `payload`: its first message echoed, with `usage` over the default."""
    return {
        "id": "msg_emulated",
        "type": "message",
        "role": "assistant",
        "model": payload.get("model"),
        "content": [{"type": "text", "text": f"echo: {payload['messages'][0]['content']}"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {**ANTHROPIC_USAGE, **(usage or {})},
    }


class AnthropicEmulator(Emulator):
    path = "/v1/messages"

    def success(self, payload, usage=None):
        return anthropic_message(payload, {**self.default_usage, **(usage or {})})


def anthropic_error(status, error_type, message="emulated error", error_code=None):
    error = {"type": error_type, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    return Reply(status=status, body={"type": "error", "error": error})


class OllamaEmulator(Emulator):
    path = "/api/chat"
    USAGE = {"prompt_eval_count": 12, "eval_count": 8}

    def success(self, payload, usage=None):
        return {
            "model": payload.get("model"),
            "created_at": "2026-11-25T00:00:00Z",
            "message": {"role": "assistant", "content": f"local echo: {payload['messages'][-1]['content']}"},
            "done": True,
            **self.USAGE,
            **self.default_usage,
            **(usage or {}),
        }


class SilentServer:
    """Accepts connections and never answers: a provider that hangs."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        for conn in self.conns:
            conn.close()
        self.sock.close()
