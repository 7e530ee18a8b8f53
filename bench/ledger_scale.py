"""Admission, GET /usage and GET /usage/history cost the same at 1 M ledger rows as at 1 k: the
request path reads counter rows, never the ledger; and a year's history costs what a month's does,
since it sums at most a line per day, model, agent and key.

Runs in-process through Django's test client against PostgreSQL, with the in-memory broker so
publishing costs nothing. Two databases of its own (dropped and made again): one whose ledger (and
runs) is filled with SQL to 1 k rows, one to 1 M. The calls alternate between the two in rounds
(the connection switched between rounds, outside the timing), so a noisy neighbour slows both alike:
POST /agents/{id}/run, GET /usage and GET /usage/history over this month and over the last 366 days,
the median of many calls at each size, and the ratios of the large to the small and of a year to a
month. The filled runs are spread over the last year, with their daily usage lines. Writes
bench/results.json.

    python bench/ledger_scale.py [--quick] [--sizes 1000 1000000] [--calls 400]   (./scripts/bench runs it)
"""

import argparse
import datetime as dt
import json
import os
import statistics
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


def recreate_database(name):
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def use_database(name):
    """Point this process's connection at another of the bench databases (closed here, opened on use)."""
    from django.db import connections

    connection = connections["default"]
    connection.close()
    connection.settings_dict["NAME"] = name


# Two statements, executed one by one: with parameters, PostgreSQL takes one statement per call when
# they are bound server-side (the settings' DATABASE_PREPARED_STATEMENTS).
FILL_SQL = [
    """
INSERT INTO agents_run (id, user_id, agent_id, tier, status, requested_model, model, catalog_model,
    provider, multiplier, system_prompt, input, output, timeout_secs, max_tokens, period, reserved_tokens,
    input_tokens, output_tokens, billed_tokens, error, provider_calls, claim, claims, heartbeat_at,
    created_at, dispatched_at, dispatches, started_at, finished_at, settled_at, request_digest)
SELECT gen_random_uuid(), %(user)s, %(agent)s, 'm1', 'completed', NULL, 'claude-haiku-4-5',
    'claude-haiku-4-5', 'anthropic', 1, 'bench', '{"message": "bench"}', '{"text": "ok"}', 300, 100,
    date_trunc('month', at AT TIME ZONE 'UTC')::date, 100, 40, 22, 62, NULL, 1, NULL, 1, NULL,
    at, now(), 1, now(), now(), now(), ''
FROM (SELECT now() - interval '1 hour' - g * interval '365 days' / %(n)s AS at
        FROM generate_series(1, %(n)s) AS g) AS spread
""",
    """
INSERT INTO billing_ledgerentry (run_id, user_id, period, model, input_tokens, output_tokens, multiplier,
    billed_tokens, created_at)
SELECT id, user_id, period, model, 40, 22, 1, 62, now() FROM agents_run
    WHERE user_id = %(user)s AND settled_at IS NOT NULL
    AND id NOT IN (SELECT run_id FROM billing_ledgerentry)
""",
    # The usage lines admission and settlement would have kept for those runs (all of them: the
    # databases are made afresh, and filled before any admission).
    """
INSERT INTO billing_usageday (user_id, day, model, agent_id, key_id, runs, input_tokens, output_tokens,
    billed_tokens)
SELECT user_id, (created_at AT TIME ZONE 'UTC')::date, model, agent_id,
    '00000000-0000-0000-0000-000000000000', count(*), sum(input_tokens), sum(output_tokens),
    sum(billed_tokens)
FROM agents_run WHERE user_id = %(user)s GROUP BY 1, 2, 3, 4
""",
]


def fill(user_id, agent_id, target):
    from django.db import connection

    from billing.models import LedgerEntry

    missing = target - LedgerEntry.objects.count()
    if missing > 0:
        with connection.cursor() as cursor:
            for sql in FILL_SQL:
                cursor.execute(sql, {"user": user_id, "agent": str(agent_id), "n": missing})
        # Settle the bulk load before timing: statistics, the visibility map, dirty pages on disk.
        connection.ensure_connection()
        connection.connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
            cursor.execute("CHECKPOINT")
    return LedgerEntry.objects.count()


def timed_ms(call, calls, warmup=20) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        response = call()
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code in (200, 202), response.content
    return samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 k vs 20 k rows, 100 calls: a smoke check")
    parser.add_argument("--sizes", type=int, nargs=2)
    parser.add_argument("--calls", type=int, help="calls per endpoint and size")
    args = parser.parse_args()
    args.sizes = args.sizes or ([1_000, 20_000] if args.quick else [1_000, 1_000_000])
    args.calls = args.calls or (100 if args.quick else 400)
    rounds = 2 if args.quick else 5
    databases = {args.sizes[0]: f"{BENCH_DB}_small", args.sizes[1]: BENCH_DB}
    for name in databases.values():
        recreate_database(name)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from accounts.services import api_key_create
    from agents.services import agent_create
    from billing.periods import period_of
    from billing.plans import plan_set

    body = json.dumps({"input": {"message": "hello"}, "max_tokens": 100})
    now = timezone.now()
    today, month = now.date(), period_of(now)
    year_ago = today - dt.timedelta(days=365)  # 366 days with today: the longest range
    history = "/api/v1/usage/history?"
    state = {}
    for size, name in databases.items():
        use_database(name)
        call_command("migrate", verbosity=0)
        user = get_user_model().objects.create(username="bench")
        plan_set(
            user=user,
            tier_slug="m1",
            token_quota=10**15,
            run_quota=10**9,
            requests_per_minute=10**9,
            max_concurrent_runs=10**9,
        )
        _, key = api_key_create(user=user)
        agent = agent_create(owner=user, name="bench")
        started = time.monotonic()
        ledger_rows = fill(user.pk, agent.pk, size)
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        calls = {
            "admission": lambda client=client, agent=agent: client.post(
                f"/api/v1/agents/{agent.pk}/run", body, content_type="application/json"
            ),
            "usage": lambda client=client: client.get("/api/v1/usage"),
            # By model, so a month and a year answer as many rows: what differs is the lines read.
            "history_month": lambda client=client: client.get(
                f"{history}from={month}&to={today}&group_by=model"
            ),
            "history_year": lambda client=client: client.get(
                f"{history}from={year_ago}&to={today}&group_by=model"
            ),
            # By day a year answers 366 rows where a month answers up to 31: shown, not a target.
            "history_year_by_day": lambda client=client: client.get(f"{history}from={year_ago}&to={today}"),
        }
        state[size] = {
            "db": name,
            "ledger_rows": ledger_rows,
            "fill_secs": round(time.monotonic() - started, 1),
            "calls": calls,
            "samples": {what: [] for what in calls},
        }
        print(f"{name}: {ledger_rows:,} ledger rows in {state[size]['fill_secs']} s")

    per_round = max(args.calls // rounds, 1)
    for _ in range(rounds):
        for size in args.sizes:
            use_database(state[size]["db"])
            for what, call in state[size]["calls"].items():
                state[size]["samples"][what] += timed_ms(call, per_round)

    rows = []
    for size in args.sizes:
        s = state[size]
        admission, usage, month_ms, year_ms, by_day_ms = (
            statistics.median(s["samples"][w])
            for w in ("admission", "usage", "history_month", "history_year", "history_year_by_day")
        )
        rows.append(
            {
                "ledger_rows": s["ledger_rows"],
                "admission_ms": round(admission, 3),
                "usage_ms": round(usage, 3),
                "history_month_ms": round(month_ms, 3),
                "history_year_ms": round(year_ms, 3),
                "history_year_by_day_ms": round(by_day_ms, 3),
                "fill_secs": s["fill_secs"],
                "calls": len(s["samples"]["usage"]),
            }
        )
        print(
            f"{s['ledger_rows']:>10,} ledger rows: POST .../run {admission:.2f} ms, "
            f"GET /usage {usage:.2f} ms, history by model: month {month_ms:.2f} ms, year {year_ms:.2f} ms, "
            f"a year by day {by_day_ms:.2f} ms "
            f"(median of {len(s['samples']['usage'])}, {rounds} rounds)"
        )

    base, top = rows[0], rows[-1]
    result = {
        "benchmark": "ledger_scale",
        "what": "median latency of admission, GET /usage and GET /usage/history (a month and a year by "
        "model, a year by day), "
        "in-process, PostgreSQL, "
        "the two sizes alternating in rounds",
        "rows": rows,
        "rounds": rounds,
        "baseline": f"{base['ledger_rows']} ledger rows",
        "ratio_admission": round(top["admission_ms"] / base["admission_ms"], 3),
        "ratio_usage": round(top["usage_ms"] / base["usage_ms"], 3),
        "ratio_history_year": round(top["history_year_ms"] / base["history_year_ms"], 3),
        # At the large size: a year's history against this month's.
        "ratio_year_to_month": round(top["history_year_ms"] / top["history_month_ms"], 3),
        "target": "every ratio <= 1.2",
    }
    ratios = ("ratio_admission", "ratio_usage", "ratio_history_year", "ratio_year_to_month")
    result["target_met"] = all(result[name] <= 1.2 for name in ratios)
    print(
        f"ratio at {top['ledger_rows']:,} vs {base['ledger_rows']:,} rows: "
        f"admission {result['ratio_admission']}, usage {result['ratio_usage']}, "
        f"history over a year {result['ratio_history_year']}; a year to a month at "
        f"{top['ledger_rows']:,} rows {result['ratio_year_to_month']}"
    )
    sys.path.insert(0, str(ROOT / "bench"))
    import common

    common.save_result("ledger_scale", result)


if __name__ == "__main__":
    main()
