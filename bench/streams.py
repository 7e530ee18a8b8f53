"""Benchmark 8: event streams held by the web tier (CONTRACT section 9), under uvicorn (2 workers,
maschina.asgi), on PostgreSQL and a private Redis.

A. Admission while streams are held: POST /agents/{id}/run from wrk (32 clients, no worker running,
   as benchmark 2) with N open event streams of N queued runs (1 000; 200 with --quick), 3 times, each
   load between two without streams (the baseline). Ratio: each load with streams over the mean of
   the two around it, the median of the rounds (target >= 0.9). The web processes' RSS before and
   after opening them gives the memory per open stream, the largest of the rounds (target <= 50 KB).
B. Delta-to-client latency: a `celery worker` (the project's defaults) runs M runs at once (100; 20
   with --quick) against the emulator streaming 20 fragments 100 ms apart, each fragment the time at
   which the emulator sent it; one client per run follows its events. Latency = receipt - that time,
   over every fragment (target p99 <= 50 ms).
Also: admission under gunicorn (2 sync workers, benchmark 2's server) against uvicorn, no streams:
the cost of the thread hop Django's ASGI handler takes for a sync view.

    python bench/streams.py [--quick]
"""

import argparse
import asyncio
import json
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BODY = json.dumps(
    {"input": {"message": "Summarize: the quick brown fox jumps over the lazy dog."}, "max_tokens": 16}
)
FRAGMENTS, FRAGMENT_DELAY = 20, 0.1
ROUNDS = 3  # loads with the streams held, each between two without


class Streams:
    """Event-stream clients on an asyncio loop of their own thread: raw HTTP/1.1, chunked decoding."""

    def __init__(self, url, key):
        parts = urlsplit(url)
        self.host, self.port, self.key = parts.hostname, parts.port, key
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.tasks: list = []
        self.opened = 0
        self.latencies: list[float] = []
        self.done = 0
        self.errors: list[str] = []

    async def _follow(self, run_id):
        opened_at = time.time()
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(
                f"GET /api/v1/runs/{run_id}/events HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {self.key}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n")[0]:
                self.errors.append(head.split(b"\r\n")[0].decode())
                return
            self.opened += 1
            buffer = b""
            while True:
                size = int((await reader.readline()).strip(), 16)
                if size == 0:
                    break
                buffer += (await reader.readexactly(size + 2))[:-2]
                received = time.time()
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    lines = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line)
                    if lines.get("event") == "delta":
                        for sent in json.loads(lines["data"])["text"].split():
                            if float(sent) >= opened_at:  # live, not replayed
                                self.latencies.append(received - float(sent))
                    elif lines.get("event") == "done":
                        self.done += 1
                        writer.close()
                        return
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.errors.append(repr(exc))

    def open(self, run_ids):
        for run_id in run_ids:
            self.tasks.append(asyncio.run_coroutine_threadsafe(self._follow(run_id), self.loop))

    def wait_opened(self, count, timeout=120):
        deadline = time.monotonic() + timeout
        while self.opened + len(self.errors) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.opened

    def close(self):
        async def cancel_all():
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def admit(user, plan, agent, count, message) -> list:
    """The ids of `count` runs admitted as the API admits them (queued, their messages published)."""
    from runs.admission import run_create

    return [
        run_create(
            user=user, plan=plan, agent=agent, input={"message": message}, model=None,
            timeout_secs=300, max_tokens=16,
        ).pk
        for _ in range(count)
    ]  # fmt: skip


def stream_round(url, key, user, plan, agent, streaming):
    """`streaming` runs at once, each followed by a client, until all are done (or a minute)."""
    streams = Streams(url, key)
    live = admit(user, plan, agent, streaming, "stream")
    streams.open(live)  # within the emulator's 1 s before it starts answering
    deadline = time.monotonic() + 60
    while streams.done + len(streams.errors) < streaming and time.monotonic() < deadline:
        time.sleep(0.1)
    return streams


def admission(url, agent, key, secs, connections=32):
    return common.wrk(
        f"{url}/api/v1/agents/{agent.pk}/run", key=key, body=BODY, connections=connections, seconds=secs
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    secs, held, streaming = (3, 200, 20) if args.quick else (10, 1000, 100)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets, here and in web

    from tests.processes import start_uvicorn, wait_http

    logs = common.log_dir("streams")
    redis = common.Redis()
    emulator = common.Emulator(logs, delay_secs=1.0, fragments=FRAGMENTS, fragment_delay_secs=FRAGMENT_DELAY)
    web = gunicorn = worker = None
    streams = None
    try:
        common.recreate_database()
        common.django_setup(redis.url(0))
        made = common.migrate_and_seed()
        user, key, agent = made["bench"]
        env = common.stack_env(broker_url=redis.url(0), anthropic_url=emulator.url)

        # The thread hop: admission under gunicorn (sync workers) and under uvicorn, no streams.
        gunicorn, gunicorn_url = common.start_web(env, logs, workers=2)
        admission(gunicorn_url, agent, key, 1, connections=4)
        under_gunicorn = admission(gunicorn_url, agent, key, secs)
        gunicorn.stop()
        gunicorn = None

        web, url = start_uvicorn(env, logs, workers=2)
        wait_http(url + "/healthz", [web], timeout=60)
        admission(url, agent, key, 1, connections=4)  # warm-up
        before = admission(url, agent, key, secs)
        print(f"  gunicorn {under_gunicorn['rps']} req/s; uvicorn {before['rps']} req/s, no streams")

        # A: N streams of N queued runs, held while the admission load runs again; ROUNDS times, each
        # between loads without streams, so a noisy minute of the machine hits both sides alike.
        from billing.selectors import plan_for

        plan = plan_for(user)
        web_pids = common.descendants(web.proc.pid)
        without, during, rounds = [before], [], []
        for _ in range(ROUNDS):
            queued = admit(user, plan, agent, held, "wait")
            time.sleep(1)
            rss_before = common.rss_kib(web_pids)
            streams = Streams(url, key)
            streams.open(queued)
            opened = streams.wait_opened(held)
            time.sleep(2)
            rss_after = common.rss_kib(web_pids)
            per_stream_kb = round((rss_after - rss_before) * 1.024 / max(opened, 1), 1)
            print(f"  {opened} streams open ({len(streams.errors)} errors), {per_stream_kb} KB each")
            during.append(admission(url, agent, key, secs))
            rounds.append(
                {
                    "open": streams.opened - len(streams.errors),
                    "errors": sorted(set(streams.errors))[:5],
                    "rss_kib_before": rss_before,
                    "rss_kib_after": rss_after,
                    "kb_per_stream": per_stream_kb,
                }
            )
            streams.close()
            streams = None
            time.sleep(1)
            without.append(admission(url, agent, key, secs))
        # Each load with streams against the mean of the loads without on either side of it.
        ratios = [during[i]["rps"] / ((without[i]["rps"] + without[i + 1]["rps"]) / 2) for i in range(ROUNDS)]
        ratio = round(statistics.median(ratios), 3)
        baseline_rps = statistics.mean(load["rps"] for load in without)
        still_open = min(r["open"] for r in rounds)
        held_errors = sorted({e for r in rounds for e in r["errors"]})[:5]
        per_stream_kb = max(r["kb_per_stream"] for r in rounds)
        print(f"  admission with streams / without, per round: {[round(r, 3) for r in ratios]}")

        # B: latency at M concurrently streaming runs. The queued runs of A never run (no worker
        # saw their messages, which go with the flush).
        redis.flush()
        worker = common.start_worker(env, logs, concurrency=None)
        common.wait_worker_ready(worker)
        # A first round warms the worker (its threads, SDK clients and connections) and is not counted.
        stream_round(url, key, user, plan, agent, streaming).close()
        streams = stream_round(url, key, user, plan, agent, streaming)
        latencies = sorted(streams.latencies)
        p = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)  # noqa: E731
        result = {
            "what": "event streams held by uvicorn (2 workers) during admission; delta latency",
            "held_streams": held,
            "held_streams_open": still_open,
            "held_streams_errors": held_errors,
            "admission": {
                "without_streams_rps": round(baseline_rps, 1),
                "with_streams_rps": round(statistics.mean(load["rps"] for load in during), 1),
                "ratio": ratio,
                "ratios": [round(r, 3) for r in ratios],
                "loads": {"without": without, "with": during},
            },
            "memory": {"kb_per_stream": per_stream_kb, "rounds": rounds},
            "latency": {
                "streaming_runs": streaming,
                "runs_done": streams.done,
                "fragments": len(latencies),
                "p50_ms": p(0.5) if latencies else None,
                "p99_ms": p(0.99) if latencies else None,
                "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
                "mean_ms": round(statistics.mean(latencies) * 1000, 1) if latencies else None,
                "errors": streams.errors[:5],
            },
            "thread_hop": {
                "gunicorn_rps": under_gunicorn["rps"],
                "uvicorn_rps": before["rps"],
                "ratio": round(before["rps"] / under_gunicorn["rps"], 3),
                "gunicorn_p50_ms": under_gunicorn["p50_ms"],
                "uvicorn_p50_ms": before["p50_ms"],
            },
            "target": "admission ratio >= 0.9; <= 50 KB per open stream; delta p99 <= 50 ms",
        }
        result["target_met"] = bool(
            latencies
            and ratio >= 0.9
            and per_stream_kb <= 50
            and result["latency"]["p99_ms"] <= 50
            and still_open == held
        )
        print(json.dumps({k: v for k, v in result.items() if k != "admission"}, indent=1))
        print(f"  admission ratio {ratio}")
        common.save_result("streams", result)
    finally:
        if streams:
            streams.close()
        for process in (gunicorn, web, worker):
            if process:
                process.stop()
        emulator.stop()
        redis.stop()


if __name__ == "__main__":
    main()
