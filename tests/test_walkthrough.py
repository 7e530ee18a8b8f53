"""The README's "Calling it" walkthrough, run as printed against `./scripts/serve` with nothing
configured (SQLite and the filesystem broker), the provider variables given to scripts/serve.

Two things differ from a reader's machine, both outside the printed commands: the port (a free one,
not 8000, on a shared machine) and, when the checkout has no `.venv` of its own, the virtualenv the
tests run from stands in for `.venv/`. MASCHINA_VAR_DIR keeps the SQLite file and broker in a
temporary folder for scripts/serve and the commands alike."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from .processes import ROOT, base_env, free_port

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Calling it\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def json_values(text: str) -> list:
    decoder, values, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


def test_the_readme_walkthrough_works_as_printed(anthropic_emulator, ollama_emulator):
    anthropic_emulator.reset()
    port = free_port()
    env = base_env(
        SECRET_KEY="",
        MASCHINA_VAR_DIR=tempfile.mkdtemp(prefix="maschina-walkthrough-"),
        ANTHROPIC_API_KEY="sk-ant-walkthrough",
        ANTHROPIC_BASE_URL=anthropic_emulator.url,
        OLLAMA_BASE_URL=ollama_emulator.url,
    )
    env.pop("SECRET_KEY")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    serve_env = {**env, "PORT": str(port), "VENV": str(VENV)}
    log = tempfile.NamedTemporaryFile(prefix="maschina-serve-", suffix=".log", delete=False)
    serve = subprocess.Popen(
        [str(ROOT / "scripts" / "serve")],
        cwd=ROOT,
        env=serve_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Path(log.name)
    try:
        deadline = time.monotonic() + 180
        while "serve: ready at" not in output.read_text():
            assert serve.poll() is None, output.read_text()[-4000:]
            assert time.monotonic() < deadline, output.read_text()[-4000:]
            time.sleep(0.5)
        printed = output.read_text()
        # Progress while it sets up, then the line a reader waits for.
        for step in ("installing requirements.txt", "applying migrations", "starting the worker"):
            assert f"serve: {step}" in printed
        assert re.search(rf"^serve: ready at http://127\.0\.0\.1:{port} ", printed, re.M)
        base = f"http://127.0.0.1:{port}"
        home = requests.get(base + "/", timeout=10)
        assert home.status_code == 200 and home.headers["Content-Type"].startswith("text/html")
        assert 'href="/api/docs/"' in home.text and 'href="/admin/"' in home.text

        script = walkthrough().replace("localhost:8000", f"localhost:{port}")
        if not (ROOT / ".venv").exists():
            script = script.replace(".venv/bin/", f"{VENV}/bin/")
        script += 'echo; echo "KEY=$KEY"\n'
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        printed, _, key = result.stdout.rpartition("KEY=")
        key = key.strip()
        assert key.startswith("msk_live_")
        # curl's answers, one after another (no newlines): the queued run, the runs, the usage, the history.
        told, _, answers = printed.partition("\n")
        assert told.startswith("alice is on m5")  # set_tier's line
        run, runs, usage, history = json_values(answers)
        assert (run["status"], run["model"]) == ("queued", "claude-haiku-4-5")
        assert runs["results"][0]["id"] == run["id"]
        assert usage["tier"] == "m5" and usage["runs"]["used"] == 1
        assert history["group_by"] == "day" and sum(row["runs"] for row in history["results"]) == 1

        headers = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + 60
        while (done := requests.get(f"{base}/api/v1/runs/{run['id']}", headers=headers, timeout=10).json())[
            "status"
        ] in ("queued", "executing"):
            assert time.monotonic() < deadline, output.read_text()[-4000:]
            time.sleep(0.2)
        assert done["status"] == "completed", (done, output.read_text()[-4000:])
        assert done["usage"]["billed_tokens"] == 62
        # SQLite's settlement (the ORM's way) kept the day's usage line too.
        history = requests.get(
            f"{base}/api/v1/usage/history?group_by=model", headers=headers, timeout=10
        ).json()
        assert history["results"] == [
            {
                "model": "claude-haiku-4-5",
                "runs": 1,
                "input_tokens": 32,
                "output_tokens": 30,
                "billed_tokens": 62,
            }
        ]
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(5)
