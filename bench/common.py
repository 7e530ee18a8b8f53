"""What the benchmarks share: the bench database, a private Redis, the provider emulator in a process of
its own, our web and worker processes, wrk, CPU accounting per process tree, and bench/results.json.

Every benchmark is a script (`python bench/<name>.py [--quick]`) that sets its environment before Django
starts, so each one gets the settings it needs (in-memory broker, or the private Redis); bench/run.py
runs them all and prints the table."""

import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH_DB = os.environ.get("BENCH_DATABASE_NAME", "maschina_bench")
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
# BENCH_RESULTS: another file, for a run that must not touch the committed results (CI's smoke check).
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results.json")
PYTHON = sys.executable
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_SECRET_KEY = "bench-only-secret-key"
DRIVER_APP = "maschina-bench-driver"  # application_name of the benchmark scripts' own connections


# --- results ------------------------------------------------------------------------------------


def machine() -> dict:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def save_result(name: str, result: dict) -> None:
    """Merge one benchmark's result into bench/results.json (each benchmark owns its key)."""
    result = {
        **result,
        "machine": machine(),
        "commit": git_commit(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = result
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


# --- the database -------------------------------------------------------------------------------


def recreate_database():
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def django_setup(broker_url: str):
    """Start Django in this process against the bench database and the given broker."""
    os.environ["DATABASE_URL"] = DATABASE_URL
    os.environ["CELERY_BROKER_URL"] = broker_url
    os.environ.setdefault("SECRET_KEY", BENCH_SECRET_KEY)
    os.environ["ALLOWED_HOSTS"] = "testserver,127.0.0.1,localhost"
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"  # with benchapp: the baselines
    os.environ.pop("DEBUG", None)
    os.environ["PGAPPNAME"] = DRIVER_APP  # our own connections, left out of the CPU of "our backends"
    import django

    django.setup()


def migrate_and_seed(users=("bench",), tier="m1"):
    """Migrate the (fresh) bench database and make users on `tier` with limits no benchmark reaches:
    quotas and rate limits stay checked (m1 is not exempt, the limits are numbers), they just never
    refuse. Returns {username: (user, key, agent)}."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from accounts.services import api_key_create
    from agents.services import agent_create
    from billing.plans import plan_set

    call_command("migrate", verbosity=0)
    made = {}
    for name in users:
        user = get_user_model().objects.create(username=name)
        plan_set(
            user=user,
            tier_slug=tier,
            token_quota=10**15,
            run_quota=10**9,
            requests_per_minute=10**9,
            max_concurrent_runs=10**9,
        )
        _, key = api_key_create(user=user)
        agent = agent_create(owner=user, name=name)
        made[name] = (user, key, agent)
    return made


def pg_backend_pids() -> list[int]:
    """The PostgreSQL backends connected to the bench database (our processes' connections)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name IS DISTINCT FROM %s",
            [BENCH_DB, DRIVER_APP],
        )
        return [row[0] for row in cursor.fetchall()]


def pg_auxiliary_pids() -> list[int]:
    """PostgreSQL's own processes (postmaster, WAL writer, checkpointer, ...): shared with anything else
    on the server, so their figure is noisy when others use it too."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(
            r"postgres: .*(walwriter|checkpointer|background writer|autovacuum|wal writer)", cmdline
        ) or re.search(r"bin/postgres -D", cmdline):
            pids.append(int(proc.name))
    return sorted(pids)


# --- CPU accounting -----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return out


def cpu_secs(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop(). A group is a callable that
    returns its pids; a thread re-reads them every 0.2 s, so a process that comes or goes during the
    load (a PostgreSQL backend replaced when a connection reaches CONN_MAX_AGE) is counted for the time
    it was seen: from its first reading (from 0 if it was born after start) to its last."""

    def __init__(self, groups: dict, interval=0.2):
        self.groups, self.interval = groups, interval

    def _sample(self, first=False):
        for name, pids in self.groups.items():
            seen = self.seen[name]
            for pid in pids():
                value = cpu_secs(pid)
                if pid not in seen:
                    seen[pid] = [value if first else 0.0, value]
                elif value >= seen[pid][1]:
                    seen[pid][1] = value

    def _loop(self):
        while not self.done.wait(self.interval):
            self._sample()

    def start(self):
        import threading

        self.seen = {name: {} for name in self.groups}
        self._sample(first=True)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.self_before = resource.getrusage(resource.RUSAGE_SELF)

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        self._sample()
        used = {name: sum(last - first for first, last in seen.values()) for name, seen in self.seen.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        # Children reaped in between: the load generator (wrk) and short commands.
        used["load generator"] = (children.ru_utime + children.ru_stime) - (
            self.children_before.ru_utime + self.children_before.ru_stime
        )
        used["bench process"] = (own.ru_utime + own.ru_stime) - (
            self.self_before.ru_utime + self.self_before.ru_stime
        )
        return used


class Profiler:
    """With BENCH_PROFILE=<folder>: py-spy records each of the given processes while a benchmark
    loads them, as flame-graph input (<folder>/<name>-<pid>.txt, collapsed stacks). Off by default.
    Pass the children too (descendants()): py-spy's --subprocesses recorded none of a running
    prefork pool's children. It samples without pausing the process (a pause of a worker with a
    thousand threads slowed it several-fold); BENCH_PROFILE_GIL=1 samples only the thread holding
    the GIL, which is where the process's Python CPU goes."""

    def __init__(self, name, pids, idle=False):
        self.procs = []
        folder = os.environ.get("BENCH_PROFILE")
        spy = shutil.which("py-spy") or str(BIN / "py-spy")
        if not folder or not Path(spy).exists():
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        for pid in pids:
            argv = [
                spy,
                "record",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                f"{folder}/{name}-{pid}.txt",
                "-p",
                str(pid),
                "--nonblocking",
            ]
            if os.environ.get("BENCH_PROFILE_GIL"):
                argv.append("--gil")
            if idle or os.environ.get("BENCH_PROFILE_IDLE"):
                argv.append("--idle")
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)

    def stop(self):
        import signal

        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(30)


def per_op_ms(cpu: dict, ops: int) -> dict:
    return {name: round(secs * 1000 / ops, 3) for name, secs in cpu.items()} if ops else {}


# --- processes ----------------------------------------------------------------------------------


class Redis:
    """A redis-server of our own: its CPU is ours alone, and nothing else's queues are touched."""

    def __init__(self):
        from tests.processes import RedisServer

        self.server = RedisServer()
        self.port = self.server.port
        self.pid = self.server.proc.pid

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def flush(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], capture_output=True, check=True)

    def stop(self):
        self.server.stop()


class Emulator:
    """The zero-latency Anthropic emulator of tests/emulators.py, in a process of its own
    (bench/emulator.py)."""

    def __init__(self, log_dir, delay_secs: float = 0, fragments: int = 0, fragment_delay_secs: float = 0):
        self.log = open(Path(log_dir) / "emulator.log", "wb")
        self.proc = subprocess.Popen(
            [PYTHON, str(ROOT / "bench" / "emulator.py")],
            cwd=ROOT,
            env={
                **os.environ,
                "BENCH_EMULATOR_DELAY_SECS": str(delay_secs),
                "BENCH_EMULATOR_FRAGMENTS": str(fragments),
                "BENCH_EMULATOR_FRAGMENT_DELAY_SECS": str(fragment_delay_secs),
            },
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"emulator did not start: {Path(log_dir, 'emulator.log').read_text()}")
        self.pid = self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def stack_env(*, broker_url, anthropic_url, **overrides) -> dict:
    """The environment of our web and worker processes: production settings (DEBUG off, default retry
    and polling figures), the bench database, the given broker and the emulator."""
    from tests.processes import base_env

    env = base_env(
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=broker_url,
        SECRET_KEY=BENCH_SECRET_KEY,
        ANTHROPIC_API_KEY="sk-ant-bench",
        ANTHROPIC_BASE_URL=anthropic_url,
        MASCHINA_VAR_DIR=tempfile.mkdtemp(prefix="maschina-bench-var-"),
        DJANGO_SETTINGS_MODULE="bench.settings",
        **overrides,
    )
    env.pop("PGAPPNAME", None)
    return env


def start_web(env, log_dir, workers=2, server="gunicorn"):
    """gunicorn (sync workers) or uvicorn (the ASGI app, as scripts/serve runs it) as the tests start
    them, once it answers."""
    from tests.processes import start_gunicorn, start_uvicorn, wait_http

    start = start_uvicorn if server == "uvicorn" else start_gunicorn
    web, url = start(env, log_dir, workers=workers)
    wait_http(url + "/healthz", [web], timeout=60)
    return web, url


def start_worker(env, log_dir, concurrency: int | None = 2, queues="maschina"):
    """`celery worker -c N` as production runs it (default WARNING log level, so no line per task);
    with no concurrency, the project's own default."""
    from tests.processes import Process

    argv = [
        str(BIN / "celery"),
        "-A",
        "maschina",
        "worker",
        *(["-c", str(concurrency)] if concurrency is not None else []),
        "-Q",
        queues,
        "-n",
        "bench@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    return Process("worker", argv, env, log_dir)


def wait_worker_ready(worker, timeout=60):
    """Ping through the broker until the worker answers."""
    from maschina.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.tail()}")
        if app.control.ping(timeout=0.5, limit=1):
            return
    raise RuntimeError(f"worker not ready in {timeout}s:\n{worker.tail()}")


# --- wrk ----------------------------------------------------------------------------------------

WRK_LUA = (
    """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do counts[code] = (counts[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(counts) do table.insert(parts, string.format('"%d": %d', code, n)) end
  io.write(string.format('BENCHJSON {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, """
    """"p90_us": %d, "p99_us": %d, "mean_us": %.1f, "statuses": {%s}}\\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, """
    """table.concat(parts, ", ")))
end
"""
)


def wrk_path() -> str:
    path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk is not installed (scripts/bench installs it: apt-get install -y wrk)")
    return path


def wrk(
    url: str, *, key: str, body: str, connections: int, seconds: float, threads: int = 2, timeout="10s"
) -> dict:
    """POST `body` to `url` from `connections` concurrent clients for `seconds`. Requests per second,
    latency percentiles (ms) and the count of each HTTP status."""
    script = Path(tempfile.mkdtemp(prefix="maschina-wrk-")) / "post.lua"
    script.write_text(WRK_LUA)
    env = {**os.environ, "BENCH_BODY": body, "BENCH_KEY": key}
    argv = [
        wrk_path(),
        "-t",
        str(min(threads, connections)),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        timeout,
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    raw = json.loads(line[len("BENCHJSON ") :])
    secs = raw["duration_us"] / 1e6
    ok = sum(n for code, n in raw["statuses"].items() if 200 <= int(code) < 300)
    return {
        "requests": raw["requests"],
        "ok": ok,
        "statuses": raw["statuses"],
        "socket_errors": raw["errors"],
        "seconds": round(secs, 3),
        "rps": round(ok / secs, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
    }


def log_dir(name) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"maschina-bench-{name}-"))
    return path


def rss_kib(pids) -> int:
    """The resident memory of these processes, in KiB (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
