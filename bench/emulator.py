"""The zero-latency Anthropic emulator of tests/emulators.py, alone in a process so its CPU is its own and
counted apart. Prints its URL on the first line of stdout, then serves until terminated.

    python bench/emulator.py [PORT]
"""
import collections
import signal
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.emulators import AnthropicEmulator  # noqa: E402


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops connections under load
    daemon_threads = True


class BenchEmulator(AnthropicEmulator):
    def __init__(self, port=0):
        super().__init__("anthropic")
        # The same handler on a server with a real listen backlog (and, if asked, a fixed port).
        self.server.shutdown()
        self.server.server_close()
        handler = self._handler()
        # Zero latency means no Nagle either: the handler writes headers and body in two sends, and
        # the second would wait for the client's delayed ACK (40 ms).
        handler.disable_nagle_algorithm = True
        self.server = _Server(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.calls = collections.deque(maxlen=1)  # a load run makes many calls: keep none of them


def main():
    emulator = BenchEmulator(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(emulator.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    emulator.close()


if __name__ == "__main__":
    main()
