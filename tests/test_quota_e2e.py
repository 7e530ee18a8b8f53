"""200 concurrent admissions through gunicorn (2 workers) for one user near the limit, then a real
worker executes what was admitted and delivers the quota alert to a signed webhook."""

import hashlib
import hmac
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from billing.models import Alert, UsagePeriod
from billing.pricing import input_token_bound, reservation
from runs.audit import audit

from .processes import (
    Api,
    RedisServer,
    manage,
    stack_env,
    start_gunicorn,
    start_worker,
    wait_http,
    wait_worker_ready,
)
from .test_quota import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_200_concurrent_admissions_near_the_limit(catalog, anthropic_emulator):
    anthropic_emulator.reset()
    receiver = Receiver(failures=1)  # the first delivery fails: the task retries it
    broker = RedisServer()
    env = stack_env(
        broker_url=broker.url,
        anthropic=anthropic_emulator,
        MASCHINA_ALERT_WEBHOOK_BACKOFF_BASE_SECS="0.2",
        MASCHINA_WEBHOOK_ALLOW_PRIVATE="1",  # the receiver is on 127.0.0.1
    )
    log_dir = tempfile.mkdtemp(prefix="maschina-quota-logs-")
    per_run = reservation(
        input_token_bound('You are a Maschina agent named "q". Complete the task provided.', "hi"), 16, 1
    )
    limit = 60 * per_run + per_run // 2
    manage(
        env, "set_tier", "quinn", "m1", "--token-quota", str(limit), "--run-quota", "75",
        "--requests-per-minute", "unlimited", "--max-concurrent-runs", "unlimited",
    )  # fmt: skip
    key = manage(env, "create_api_key", "quinn").strip().splitlines()[-1]
    secret = manage(env, "set_alert_webhook", "quinn", receiver.url).strip().splitlines()[-1]
    web, url = start_gunicorn(env, log_dir, workers=2)
    processes = [web]
    try:
        wait_http(url + "/healthz", [web])
        client = Api(url, key)
        agent_id = client.post("/api/v1/agents", {"name": "q"}).json()["id"]

        def admit(_):
            return client.post(
                f"/api/v1/agents/{agent_id}/run", {"input": {"message": "hi"}, "max_tokens": 16}
            ).status_code

        with ThreadPoolExecutor(50) as pool:
            codes = list(pool.map(admit, range(200)))
        assert (codes.count(202), codes.count(429), len(codes)) == (60, 140, 200)
        row = UsagePeriod.objects.get(user__username="quinn")
        assert row.tokens_reserved == 60 * per_run <= limit
        assert row.runs_used == 60

        worker = start_worker(env, log_dir, concurrency=2)
        processes.append(worker)
        wait_worker_ready(worker)
        deadline = time.monotonic() + 60
        while UsagePeriod.objects.get(pk=row.pk).tokens_reserved and time.monotonic() < deadline:
            time.sleep(0.2)
        row.refresh_from_db()
        assert (row.tokens_used, row.tokens_reserved) == (60 * 62, 0)
        assert row.tokens_used <= limit
        assert audit()[1] == []

        # 60 of 75 runs is 80 %: one alert, delivered on the second try, signed with the user's secret.
        deadline = time.monotonic() + 30
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        alert = Alert.objects.get(user__username="quinn")
        assert (alert.quota, alert.threshold, alert.used, alert.limit) == ("runs", 80, 60, 75)
        assert len(receiver.requests) == 2
        headers, body = receiver.requests[-1]
        expected = (
            "sha256="
            + hmac.new(
                secret.encode(), headers["X-Maschina-Timestamp"].encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        assert headers["X-Maschina-Signature"] == expected
        assert json.loads(body)["threshold"] == 80
        alert.refresh_from_db()
        assert alert.delivered_at is not None and alert.delivery_attempts == 2
        alerts = client.get("/api/v1/alerts").json()
        assert alerts["count"] == 1 and alerts["results"][0]["delivered_at"]
    finally:
        for process in processes:
            process.stop()
        broker.stop()
        receiver.close()
