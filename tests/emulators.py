"""Loopback HTTP emulators of the providers: Anthropic's POST /v1/messages and Ollama's POST /api/chat.

They are real HTTP servers, so the runners go through the real anthropic SDK and requests. Each
answers from a script: queued replies per model (consumed in order), else the default reply.
Anthropic's answers a request with `"stream": true` as the Messages API does: server-sent events
(message_start with the input usage, a content_block_delta per fragment of text, message_delta with
the output usage, message_stop), with a delay between fragments if asked. Given an SSL context,
an emulator serves HTTPS, as the real providers do."""

import json
import random
import re
import ssl
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
    # Streaming: the text's fragments (default: a word each), the delay before each one (default: the
    # emulator's delta_delay), and a failure after this many fragments: "error" sends an SSE error
    # event (overloaded), "drop" closes the connection.
    chunks: list | None = None
    delta_delay: float | None = None
    fail_after: int | None = None
    fail_mode: str = "error"


HOLD_LIMIT_SECS = 300  # a held call is answered after this even if the test never releases it


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of runs connect at once in the in-flight tests


class Emulator:
    def __init__(self, name, tls: ssl.SSLContext | None = None):
        self.name = name
        self.calls = []  # (path, request json, headers)
        self.script = defaultdict(deque)
        self.default_usage = {}
        self.fail_rate = 0.0  # share of unscripted calls answered with fail_reply
        self.fail_reply = None
        self.delay = 0.0  # delay of unscripted successful calls
        self.delta_delay = 0.0  # delay before each streamed fragment
        self.deltas = []  # (time.time(), fragment) of every fragment streamed
        self.disconnects = []  # (model, fragments sent) of streams the client closed before their end
        self._rng = random.Random(31)
        self._lock = threading.Lock()
        self.in_flight = 0  # requests being answered now, and the most at once since reset()
        self.peak_in_flight = 0
        self._gate = None  # while set by hold(), every call waits here until release()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        if tls is not None:  # each connection's handshake happens as it is accepted
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self):
        """Hold every call from now on until release(): a test can then see how many are open at once
        however slowly the machine lets the worker claim them."""
        self._gate = threading.Event()

    def release(self):
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    def reset(self):
        self.release()
        with self._lock:
            self.calls.clear()
            self.script.clear()
            self.default_usage = {}
            self.fail_rate, self.fail_reply, self.delay, self.delta_delay = 0.0, None, 0.0, 0.0
            self.deltas.clear()
            self.disconnects.clear()
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
                    gate = emulator._gate
                    if gate is not None:
                        gate.wait(HOLD_LIMIT_SECS)
                    if reply.delay:
                        time.sleep(reply.delay)
                    body = reply.body if reply.body is not None else emulator.success(payload, reply.usage)
                    if reply.status == 200 and payload.get("stream") and hasattr(emulator, "stream_events"):
                        self._stream(payload, reply, body)
                    else:
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
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client gave up (a timeout or a cancel): what we are testing

            def _stream(self, payload, reply, body):
                """The answer as server-sent events, in chunked transfer encoding."""
                sent = 0
                delay = emulator.delta_delay if reply.delta_delay is None else reply.delta_delay
                try:
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    for event, data in emulator.stream_events(body, reply.chunks):
                        if event == "content_block_delta" and data["delta"]["type"] == "text_delta":
                            if reply.fail_after is not None and sent >= reply.fail_after:
                                if reply.fail_mode == "drop":
                                    self.close_connection = True
                                    return
                                event = "error"
                                data = {
                                    "type": "error",
                                    "error": {"type": "overloaded_error", "message": "x"},
                                }
                                self._chunk(f"event: {event}\ndata: {json.dumps(data)}\n\n")
                                break
                            if delay:
                                time.sleep(delay)
                            with emulator._lock:
                                emulator.deltas.append((time.time(), data["delta"]["text"]))
                            sent += 1
                        self._chunk(f"event: {event}\ndata: {json.dumps(data)}\n\n")
                    self._chunk("")
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    with emulator._lock:
                        emulator.disconnects.append((payload.get("model"), sent))
                    self.close_connection = True

            def _chunk(self, text):
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

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


def fragments(text):
    """A text as the fragments a model streams: a word each, with the spaces that follow it."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def anthropic_stream_events(message, chunks=None):
    """The server-sent events (name, data) in which the Messages API streams `message`: the input
    usage in message_start, the output usage in message_delta."""
    usage = message.get("usage")
    start_usage = dict(usage, output_tokens=1) if isinstance(usage, dict) else usage
    if isinstance(usage, dict) and "output_tokens" not in usage:
        start_usage = {k: v for k, v in start_usage.items() if k != "output_tokens"}
    started = {k: v for k, v in message.items() if k not in ("content", "usage")}
    started.update(content=[], stop_reason=None, stop_sequence=None)
    if usage is not None:
        started["usage"] = start_usage
    yield "message_start", {"type": "message_start", "message": started}
    yield "ping", {"type": "ping"}
    blocks = message.get("content")
    for index, block in enumerate(blocks if isinstance(blocks, list) else []):
        if block.get("type") != "text":
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            text = block.get("text")
            for piece in (
                chunks if chunks is not None else fragments(text) if isinstance(text, str) else [text]
            ):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    delta_usage = {"output_tokens": usage.get("output_tokens")} if isinstance(usage, dict) else {}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message.get("stop_reason", "end_turn"), "stop_sequence": None},
            "usage": delta_usage,
        },
    )
    yield "message_stop", {"type": "message_stop"}


class AnthropicEmulator(Emulator):
    path = "/v1/messages"

    def success(self, payload, usage=None):
        return anthropic_message(payload, {**self.default_usage, **(usage or {})})

    def stream_events(self, body, chunks=None):
        return anthropic_stream_events(body, chunks)


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
