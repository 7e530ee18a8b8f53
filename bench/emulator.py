"""The zero-latency Anthropic emulator of the benchmarks: the answer of tests/emulators.py
(anthropic_message) on a lean HTTP/1.1 server, alone in a process so its CPU is counted apart.

Lean because a real provider does not run on our two cores: http.server's request parsing cost
~0.3 ms of CPU per call, taken from the processes under test; this loop of recv and
sendall, a thread per connection, takes a fraction of that. It serves POST /v1/messages over
keep-alive connections, a request's body read by its content-length (the SDK and LiteLLM always
send one), and answers anything else 404. A chunked body or an `Expect` it does not read: it answers
501 and closes the connection, rather than answer out of step.
With BENCH_EMULATOR_DELAY_SECS set it answers each request that much later, as a real model takes
seconds to answer. A request with `"stream": true` is answered with the Messages API's server-sent
events (tests/emulators.py, anthropic_stream_events), at once; with BENCH_EMULATOR_FRAGMENTS=N, as
N text fragments BENCH_EMULATOR_FRAGMENT_DELAY_SECS apart, each fragment the time.time() at which
it was sent (and a space), so a client can tell how long each one took to reach it.
Prints its URL on the first line of stdout, then serves until terminated.

    python bench/emulator.py [PORT]
"""

import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.emulators import anthropic_message, anthropic_stream_events

PATH = b"/v1/messages"
DELAY_SECS = float(os.environ.get("BENCH_EMULATOR_DELAY_SECS") or 0)
FRAGMENTS = int(os.environ.get("BENCH_EMULATOR_FRAGMENTS") or 0)
FRAGMENT_DELAY_SECS = float(os.environ.get("BENCH_EMULATOR_FRAGMENT_DELAY_SECS") or 0)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(name: str, data: dict) -> bytes:
    event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def stream(sock, message: dict) -> None:
    """The answer as server-sent events: at once, or fragment by fragment (FRAGMENTS)."""
    if not FRAGMENTS:
        sock.sendall(
            STREAM_HEAD + b"".join(chunk(*e) for e in anthropic_stream_events(message)) + b"0\r\n\r\n"
        )
        return
    message["content"] = [{"type": "text", "text": ""}]
    sock.sendall(STREAM_HEAD)
    for name, data in anthropic_stream_events(message, chunks=[None] * FRAGMENTS):
        if name == "content_block_delta":
            time.sleep(FRAGMENT_DELAY_SECS)
            data["delta"]["text"] = f"{time.time():.6f} "
        sock.sendall(chunk(name, data))
    sock.sendall(b"0\r\n\r\n")


def response(status: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 501: "Not Implemented"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def answer(request_line: bytes, body: bytes) -> bytes:
    method, _, rest = request_line.partition(b" ")
    if method != b"POST" or rest.partition(b" ")[0].partition(b"?")[0] != PATH:
        return response(404, {"error": f"no route {request_line.decode('latin-1')}"})
    try:
        return response(200, anthropic_message(json.loads(body)))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return response(
            400, {"type": "error", "error": {"type": "invalid_request_error", "message": "unreadable body"}}
        )


def _streamed(request_line: bytes, body: bytes) -> dict | None:
    """The request's JSON, if it asks for a stream on the Messages route."""
    if b'"stream"' not in body or not request_line.startswith(b"POST " + PATH):
        return None
    try:
        payload = json.loads(body)
        payload["messages"][0]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return payload if payload.get("stream") else None


class Connection(socketserver.BaseRequestHandler):
    """One client connection, on a thread of its own: answers each request in the order it came."""

    def handle(self):
        sock, buffer = self.request, b""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            while (end_of_head := buffer.find(b"\r\n\r\n")) < 0:
                if not (data := sock.recv(65536)):
                    return  # the client closed the connection
                buffer += data
            head = buffer[:end_of_head].split(b"\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            if b"transfer-encoding" in headers or b"expect" in headers:
                sock.sendall(response(501, {"error": "chunked bodies and Expect are not emulated"}))
                return
            end = end_of_head + 4 + int(headers.get(b"content-length") or 0)
            while len(buffer) < end:  # the rest of the body is still on its way
                if not (data := sock.recv(65536)):
                    return
                buffer += data
            body, buffer = buffer[end_of_head + 4 : end], buffer[end:]
            if DELAY_SECS:
                time.sleep(DELAY_SECS)
            payload = _streamed(head[0], body)
            if payload is not None:
                stream(sock, anthropic_message(payload))
            else:
                sock.sendall(answer(head[0], body))
            if headers.get(b"connection") == b"close":
                return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096  # the default backlog of 5 drops connections under load


def main():
    server = Server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Connection)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):  # shutdown() waits for serve_forever: from another thread
        signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
