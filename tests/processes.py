"""Real processes for end-to-end tests: the web app under gunicorn (or runserver) and Celery workers."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# The shared Redis the tests may use, and only these of its databases: TEST_REDIS_DBS names four, for
# the live-rules test, the browser test, the end-to-end test and the suite's own broker (scripts/test).
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
_TEST_REDIS_DBS = dict(
    zip(
        ("live_rules", "browser", "e2e", "broker"),
        os.environ.get("TEST_REDIS_DBS", "8,9,12,14").split(","),
        strict=False,
    )
)


def redis_url_for(purpose: str) -> str:
    """The shared Redis database set aside for `purpose` (one of the four above)."""
    return f"{TEST_REDIS_URL}/{_TEST_REDIS_DBS[purpose]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    def __init__(self, name, argv, env, log_dir):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def tail(self, lines=40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def base_env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DEBUG"}}
    env.update({"PYTHONUNBUFFERED": "1", "SECRET_KEY": env.get("SECRET_KEY", "test-only-secret-key")})
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def test_database_url() -> str:
    """The URL of pytest-django's test database, for processes that must share it."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def stack_env(*, broker_url, anthropic=None, ollama=None, database_url=None, **overrides) -> dict:
    """The environment of web, worker and beat processes under test: the test database (or
    `database_url`), the given broker, the provider emulators, and fast retries and polling."""
    return base_env(
        DATABASE_URL=database_url or test_database_url(),
        CELERY_BROKER_URL=broker_url,
        ANTHROPIC_API_KEY="sk-ant-test",
        ANTHROPIC_BASE_URL=anthropic.url if anthropic else None,
        OLLAMA_BASE_URL=ollama.url if ollama else None,
        MASCHINA_PROVIDER_BACKOFF_BASE_SECS="0.05",
        MASCHINA_CANCEL_POLL_SECS="0.1",
        MASCHINA_VAR_DIR=tempfile.mkdtemp(prefix="maschina-var-"),
        **overrides,
    )


def manage(env, *args) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def start_gunicorn(env, log_dir, workers=2) -> tuple[Process, str]:
    port = free_port()
    argv = [
        str(BIN / "gunicorn"),
        "maschina.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
    ]
    return Process("web", argv, env, log_dir), f"http://127.0.0.1:{port}"


def start_uvicorn(env, log_dir, workers=1) -> tuple[Process, str]:
    """The web app as the recommended deployment serves it: the ASGI app under uvicorn with httptools."""
    port = free_port()
    argv = [
        str(BIN / "uvicorn"),
        "maschina.asgi:application",
        "--http",
        "httptools",
        "--lifespan",
        "off",
        "--no-access-log",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return Process("web", argv, env, log_dir), f"http://127.0.0.1:{port}"


class EventStream:
    """A client of GET /runs/{id}/events: its events as they arrive, each with the time it came."""

    def __init__(self, api, run_id, last_event_id=None, timeout=30):
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        self.response = api.session.get(
            f"{api.base_url}/api/v1/runs/{run_id}/events", headers=headers, stream=True, timeout=timeout
        )
        self.comments: list[tuple[float, str]] = []
        self._chunks = self.response.iter_content(chunk_size=None)
        self._buffer = b""

    def __iter__(self):
        """(time.time() of receipt, id, event, data as JSON) per event, to the end of the stream."""
        import json

        while True:
            while b"\n\n" not in self._buffer:
                try:
                    self._buffer += next(self._chunks)
                except StopIteration:
                    return
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            received = time.time()
            fields = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append((received, line[1:].strip()))
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "event" in fields:
                yield received, int(fields["id"]), fields["event"], json.loads(fields["data"])

    def close(self):
        self.response.close()


def start_worker(
    env, log_dir, name="worker", concurrency: int | None = 2, beat=False, pool: str | None = None
) -> Process:
    argv = [
        str(BIN / "celery"),
        "-A",
        "maschina",
        "worker",
        "--loglevel=INFO",
        "-n",
        f"{name}@%h",
    ]
    if concurrency is not None:  # None: the project's own default, as `celery -A maschina worker` runs
        argv += ["-c", str(concurrency)]
    if pool is not None:  # None: the project's own (threads)
        argv += ["-P", pool]
    if beat:
        argv.append("-B")
    return Process(name, argv, env, log_dir)


@contextlib.contextmanager
def web_and_worker(env, name, server="gunicorn"):
    """gunicorn (2 workers; or uvicorn, 1) and a `celery worker` (-c 2), both ready; stopped on exit."""
    log_dir = tempfile.mkdtemp(prefix=f"maschina-{name}-logs-")
    web, url = start_gunicorn(env, log_dir) if server == "gunicorn" else start_uvicorn(env, log_dir)
    worker = start_worker(env, log_dir)
    try:
        wait_http(url + "/healthz", [web, worker])
        wait_worker_ready(worker)
        yield url
    finally:
        web.stop()
        worker.stop()


def wait_http(url, processes, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.proc.poll() is not None:
                raise AssertionError(f"{process.name} exited:\n{process.tail()}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def wait_worker_ready(worker, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"{worker.name} exited:\n{worker.tail()}")
        if b" ready." in worker.log_path.read_bytes():
            return
        time.sleep(0.1)
    raise AssertionError(f"{worker.name} not ready in {timeout}s:\n{worker.tail()}")


def wait_terminal(api, run_id, timeout=30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(f"/api/v1/runs/{run_id}")
        run = response.json()
        assert response.status_code == 200, run
        if run["status"] in {"completed", "failed", "timed_out", "canceled"}:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")


class Api:
    """A tiny HTTP client for the running app."""

    def __init__(self, base_url, key=None):
        self.base_url, self.session = base_url, requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def get(self, path, **kw):
        return self.session.get(self.base_url + path, timeout=10, **kw)

    def post(self, path, json=None, **kw):
        return self.session.post(self.base_url + path, json=json, timeout=10, **kw)


# --- services of our own, on other ports, for tests that stop them ----------------------------------


class RedisServer:
    def __init__(self, port=None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        import shutil

        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True)
            if ping.stdout.strip() == b"PONG":
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class PostgresServer:
    """A throwaway PostgreSQL cluster (run as the postgres user, as the server refuses root)."""

    def __init__(self):
        import glob
        import shutil

        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent
        self.port = free_port()
        self.data = Path(tempfile.mkdtemp(prefix="maschina-pg-"))
        shutil.chown(self.data, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/maschina"
        self.start()
        self._as_postgres(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "maschina"
        )

    def _as_postgres(self, *argv):
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr

    def start(self):
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.data / "log"),
            "start",
        )

    def stop(self):
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self):
        import shutil

        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.data, ignore_errors=True)

    def query(self, sql) -> str:
        result = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "maschina",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def start_beat(env, log_dir) -> Process:
    argv = [
        str(BIN / "celery"),
        "-A",
        "maschina",
        "beat",
        "--loglevel=INFO",
        "-s",
        str(Path(log_dir) / "beat-schedule"),
    ]
    return Process("beat", argv, env, log_dir)


def children(pid) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# --- the runs of a test cluster (conftest.cluster) ----------------------------------------------


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def publish(cluster, run):
    """Publish the run's task to the cluster's broker (the test process is configured for another)."""
    from maschina.celery import app
    from runs.dispatch import task_time_limits
    from runs.tasks import execute_run

    soft, hard = task_time_limits(run.timeout_secs)
    with app.connection_for_write(cluster["broker"].url) as conn:
        execute_run.apply_async(
            args=[str(run.pk)], task_id=str(run.pk), soft_time_limit=soft, time_limit=hard, connection=conn
        )


def publish_many(cluster, runs):
    """publish() for many runs over one broker connection."""
    from maschina.celery import app
    from runs.dispatch import task_time_limits
    from runs.tasks import execute_run

    with app.connection_for_write(cluster["broker"].url) as conn:
        for run in runs:
            soft, hard = task_time_limits(run.timeout_secs)
            execute_run.apply_async(
                args=[str(run.pk)],
                task_id=str(run.pk),
                soft_time_limit=soft,
                time_limit=hard,
                connection=conn,
            )
