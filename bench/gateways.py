"""Benchmark 6: gated, billed calls per second end to end, ours vs the LiteLLM proxy, same box, same run.

Ours: the whole stack on this machine, gunicorn (2 workers) and one worker (`-c 2`), PostgreSQL and a
private Redis. wrk POSTs /agents/{id}/run for the load period; the clock stops when the last run it
admitted is settled (POST -> gate -> reserve -> worker -> provider -> settle), so a backlog the worker
had not finished is counted in full: calls per second = settled runs / (load start -> last settlement).

Peer: the LiteLLM proxy (../shared/peers/litellm/: custom auth with per-key model lists, budgets in
Redis, 2 workers, no database), installed in a virtualenv outside the repository
(~/.cache/maschina-bench/litellm-venv). wrk POSTs /v1/chat/completions: each 200 is a gated, budgeted
call that has reached the provider. Both talk to the same zero-latency Anthropic emulator (its own
process), and load alternates between the two so a noisy neighbour hits both alike.

    python bench/gateways.py [--quick]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

PEER_DIR = Path(os.environ.get("BENCH_LITELLM_PEER_DIR", common.ROOT.parent / "shared" / "peers" / "litellm"))
LITELLM_VENV = Path(
    os.environ.get("BENCH_LITELLM_VENV", Path.home() / ".cache" / "maschina-bench" / "litellm-venv")
)
RUN_BODY = json.dumps({"input": {"message": "hi"}, "model": "claude-haiku-4-5", "max_tokens": 16})
PEER_BODY = json.dumps(
    {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)
PEER_KEY = "sk-bench-load"


class LiteLLM:
    def __init__(self, log_dir, emulator_url, redis_url, workers=2):
        from tests.processes import free_port

        exe = LITELLM_VENV / "bin" / "litellm"
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing: scripts/bench installs it (pip install 'litellm[proxy]')")
        # The peer's own config, pointed at our emulator and our private Redis.
        folder = Path(log_dir) / "litellm"
        folder.mkdir()
        shutil.copy(PEER_DIR / "custom_auth.py", folder)
        config = (PEER_DIR / "config.yaml").read_text()
        config = config.replace("http://127.0.0.1:18081", emulator_url).replace(
            "redis://127.0.0.1:6379/13", redis_url
        )
        (folder / "config.yaml").write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE"}}
        env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
        self.log = open(Path(log_dir) / "litellm.log", "wb")
        argv = [
            str(exe),
            "--config",
            "config.yaml",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            str(workers),
        ]
        self.proc = subprocess.Popen(
            argv, cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.log_path = Path(log_dir) / "litellm.log"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/health/liveliness", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"litellm did not start:\n{self.log_path.read_text()[-3000:]}")
        # Both workers up, and the gate works as configured: a model outside the key's list is refused.
        for _ in range(4):
            ok = requests.post(
                self.url + "/v1/chat/completions",
                data=PEER_BODY,
                headers={"Authorization": f"Bearer {PEER_KEY}", "Content-Type": "application/json"},
                timeout=30,
            )
            assert ok.status_code == 200, ok.text
        denied = requests.post(
            self.url + "/v1/chat/completions",
            data=PEER_BODY.replace("claude-haiku-4-5", "claude-sonnet-4-6"),
            headers={"Authorization": f"Bearer {PEER_KEY}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert denied.status_code in (401, 403), denied.text

    def version(self):
        out = subprocess.run(
            [
                str(LITELLM_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def stop(self):
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", type=int, nargs="+", default=[8])
    parser.add_argument("--worker-concurrency", type=int, default=2)
    args = parser.parse_args()
    secs, rounds = (
        (4, 1) if args.quick else (15, 3)
    )  # three alternating rounds: the ratio moved by ±0.07 with two

    logs = common.log_dir("gateways")
    redis = common.Redis()
    emulator = common.Emulator(logs)
    web = worker = peer = None
    try:
        common.recreate_database()
        common.django_setup(redis.url(0))
        made = common.migrate_and_seed()
        _, key, agent = made["bench"]
        from django.db.models import Max, Min

        from runs.models import Run

        env = common.stack_env(broker_url=redis.url(0), anthropic_url=emulator.url)
        web, url = common.start_web(env, logs, workers=2)
        worker = common.start_worker(env, logs, concurrency=args.worker_concurrency or None)
        common.wait_worker_ready(worker)
        peer = LiteLLM(logs, emulator.url, redis.url(13))
        run_url = f"{url}/api/v1/agents/{agent.pk}/run"
        peer_url = peer.url + "/v1/chat/completions"

        def settled_all(timeout=600):
            deadline = time.monotonic() + timeout
            while Run.objects.filter(settled_at__isnull=True).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("runs not settled in time")
                time.sleep(0.05)

        def ours(connections, seconds):
            meter = common.CpuMeter(
                {
                    "web": lambda: common.descendants(web.proc.pid),
                    "worker": lambda: common.descendants(worker.proc.pid),
                    "postgres (our backends)": common.pg_backend_pids,
                    "redis": lambda: [redis.pid],
                    "emulator": lambda: [emulator.pid],
                }
            )
            before = Run.objects.count()
            profiler = common.Profiler(  # with BENCH_PROFILE only
                f"gateways-c{connections}",
                common.descendants(web.proc.pid) + common.descendants(worker.proc.pid),
            )
            meter.start()
            started = time.time()
            load = common.wrk(run_url, key=key, body=RUN_BODY, connections=connections, seconds=seconds)
            settled_all()
            cpu = meter.stop()
            profiler.stop()
            runs = Run.objects.filter(created_at__gte=_ts(started))
            n = runs.count()
            span = runs.aggregate(first=Min("created_at"), last=Max("settled_at"))
            elapsed = max(time.time() - started, 1e-9)
            wall = (span["last"] - _ts(started)).total_seconds()
            completed = runs.filter(status="completed").count()
            # Every run admitted counts once it is settled, also those whose 202 wrk did not wait for.
            assert Run.objects.count() - before == n >= load["ok"] and load["ok"] == load["requests"], (
                n,
                load,
            )
            return {
                "calls": completed,
                "admitted": n,
                "seconds": round(wall, 3),
                "per_second": round(completed / wall, 1),
                "admission_rps": load["rps"],
                "admission_p50_ms": load["p50_ms"],
                "admission_p99_ms": load["p99_ms"],
                "drain_after_load_s": round(wall - load["seconds"], 2),
                "statuses": load["statuses"],
                "cpu_ms_per_call": common.per_op_ms(cpu, completed),
                "observed_s": round(elapsed, 2),
            }

        def theirs(connections, seconds):
            meter = common.CpuMeter(
                {
                    "litellm": lambda: common.descendants(peer.proc.pid),
                    "redis": lambda: [redis.pid],
                    "emulator": lambda: [emulator.pid],
                }
            )
            meter.start()
            load = common.wrk(
                peer_url,
                key=PEER_KEY,
                body=PEER_BODY,
                connections=connections,
                seconds=seconds,
                timeout="30s",
            )
            cpu = meter.stop()
            return {
                "calls": load["ok"],
                "seconds": load["seconds"],
                "per_second": load["rps"],
                "p50_ms": load["p50_ms"],
                "p99_ms": load["p99_ms"],
                "statuses": load["statuses"],
                "cpu_ms_per_call": common.per_op_ms(cpu, load["ok"]),
            }

        # Warm-up both.
        ours(4, 2)
        theirs(4, 2)
        rows = []
        for connections in args.connections:
            figures = {"maschina": [], "litellm": []}
            for _ in range(rounds):
                for name, fn in (("maschina", ours), ("litellm", theirs)):
                    item = fn(connections, secs)
                    figures[name].append(item)
                    print(
                        f"  c={connections} {name}: {item['per_second']} calls/s, "
                        f"statuses {item['statuses']}, cpu/call {item['cpu_ms_per_call']}"
                    )
            row = {"connections": connections}
            for name, items in figures.items():
                calls = sum(i["calls"] for i in items)
                seconds = sum(i["seconds"] for i in items)
                row[name] = {
                    "per_second": round(calls / seconds, 1),
                    "calls": calls,
                    "seconds": round(seconds, 2),
                    "cpu_ms_per_call": {
                        g: round(sum(i["cpu_ms_per_call"][g] * i["calls"] for i in items) / calls, 3)
                        for g in items[0]["cpu_ms_per_call"]
                    },
                    "rounds": items,
                }
            row["ratio"] = round(row["maschina"]["per_second"] / row["litellm"]["per_second"], 3)
            rows.append(row)
            print(
                f"c={connections}: maschina {row['maschina']['per_second']}/s "
                f"vs litellm {row['litellm']['per_second']}/s, ratio {row['ratio']}"
            )
        result = {
            "what": "gated, billed calls per second end to end (POST -> worker -> settle), "
            "whole stack on this box",
            "baseline": f"LiteLLM proxy {peer.version()} "
            "(2 workers, custom auth with per-key model lists, Redis budgets)",
            "seconds_per_load": secs,
            "rounds": rounds,
            "rows": rows,
            "target": "ratio >= 1.5",
            "target_met": all(r["ratio"] >= 1.5 for r in rows),
        }
        common.save_result("gateways", result)
    finally:
        for process in (peer, worker, web):
            if process:
                process.stop()
        emulator.stop()
        redis.stop()


def _ts(epoch):
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC)


if __name__ == "__main__":
    main()
