"""Admission and GET /usage cost the same at 1 M ledger rows as at 1 k (issue 4): the request path
reads counter rows, never the ledger.

Runs in-process through Django's test client against PostgreSQL (a database of its own, dropped and
made again), with the in-memory broker so publishing costs nothing. For each ledger size it fills the
ledger (and its runs) with SQL, then times POST /agents/{id}/run and GET /usage: the median of many
calls, as a ratio to the 1 k figure measured in the same run. Writes bench/results.json.

    ./scripts/bench            # or: python bench/ledger_scale.py [--sizes 1000 1000000] [--calls 400]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = os.environ.get("BENCH_DATABASE_NAME", "maschina_bench")
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}")
os.environ["CELERY_BROKER_URL"] = "memory://"
os.environ.setdefault("SECRET_KEY", "bench-only")
os.environ["ALLOWED_HOSTS"] = "testserver"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maschina.settings")


def recreate_database():
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


FILL_SQL = """
INSERT INTO agents_run (id, user_id, agent_id, tier, status, requested_model, model, catalog_model, provider, multiplier,
    system_prompt, input, output, timeout_secs, max_tokens, period, reserved_tokens, input_tokens, output_tokens,
    billed_tokens, error, provider_calls, claim, claims, heartbeat_at, created_at, dispatched_at, started_at, finished_at, settled_at)
SELECT gen_random_uuid(), %(user)s, %(agent)s, 'm1', 'completed', NULL, 'claude-haiku-4-5', 'claude-haiku-4-5', 'anthropic', 1,
    'bench', '{"message": "bench"}', '{"text": "ok"}', 300, 100, %(period)s, 100, 40, 22, 62, NULL, 1, NULL, 1, NULL,
    now() - interval '1 hour', now(), now(), now(), now()
FROM generate_series(1, %(n)s);
INSERT INTO billing_ledgerentry (run_id, user_id, period, model, input_tokens, output_tokens, multiplier, billed_tokens, created_at)
SELECT id, user_id, period, model, 40, 22, 1, 62, now() FROM agents_run WHERE user_id = %(user)s AND settled_at IS NOT NULL
    AND id NOT IN (SELECT run_id FROM billing_ledgerentry);
"""


def fill(user_id, agent_id, period, target):
    from django.db import connection

    from billing.models import LedgerEntry

    missing = target - LedgerEntry.objects.count()
    if missing > 0:
        with connection.cursor() as cursor:
            cursor.execute(FILL_SQL, {"user": user_id, "agent": str(agent_id), "period": period, "n": missing})
        # Settle the bulk load before timing: statistics, the visibility map, dirty pages on disk.
        connection.ensure_connection()
        connection.connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
            cursor.execute("CHECKPOINT")
    return LedgerEntry.objects.count()


def median_ms(call, calls):
    for _ in range(20):  # warm-up
        call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        response = call()
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code in (200, 202), response.content
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()

    recreate_database()
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from accounts.services import api_key_create
    from agents.services import agent_create
    from billing.periods import period_of
    from billing.services import plan_set
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create(username="bench")
    plan_set(user=user, tier_slug="m1", token_quota=10**15, run_quota=10**9)
    _, key = api_key_create(user=user)
    agent = agent_create(owner=user, name="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = json.dumps({"input": {"message": "hello"}, "max_tokens": 100})

    rows = []
    for size in args.sizes:
        started = time.monotonic()
        ledger_rows = fill(user.pk, agent.pk, period_of(timezone.now()), size)
        fill_secs = time.monotonic() - started
        admission = median_ms(lambda: client.post(f"/api/v1/agents/{agent.pk}/run", body, content_type="application/json"), args.calls)
        usage = median_ms(lambda: client.get("/api/v1/usage"), args.calls)
        rows.append({"ledger_rows": ledger_rows, "admission_ms": round(admission, 3), "usage_ms": round(usage, 3), "fill_secs": round(fill_secs, 1)})
        print(f"{ledger_rows:>10,} ledger rows: POST .../run {admission:.2f} ms, GET /usage {usage:.2f} ms (median of {args.calls})")

    base, top = rows[0], rows[-1]
    result = {
        "benchmark": "ledger_scale",
        "what": "median latency of admission and GET /usage, in-process, PostgreSQL",
        "rows": rows,
        "baseline": f"{base['ledger_rows']} ledger rows",
        "ratio_admission": round(top["admission_ms"] / base["admission_ms"], 3),
        "ratio_usage": round(top["usage_ms"] / base["usage_ms"], 3),
        "target": "ratio <= 1.2",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
    }
    print(f"ratio at {top['ledger_rows']:,} vs {base['ledger_rows']:,} rows: admission {result['ratio_admission']}, usage {result['ratio_usage']}")
    out = ROOT / "bench" / "results.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results["ledger_scale"] = result
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
