"""Benchmark 3: SQL queries per request, counted as production issues them.

In-process through Django's test client against the bench database in autocommit mode (not inside a
test transaction, so the dispatch after commit runs and is counted), with production settings
(RULES_REFRESH_SECS 0.5) and the in-memory broker. After a warm-up, each request is repeated and its
queries counted; reported are the median and the largest count. tests/test_quota.py asserts the same
budgets inside a test transaction (where the after-commit dispatch does not run).

    python bench/queries.py [--quick]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

TARGETS = {"POST /agents/{id}/run": 8, "GET /runs/{id}": 3, "GET /usage": 4}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    calls = 20 if args.quick else 100

    common.recreate_database()
    common.django_setup("memory://")
    made = common.migrate_and_seed()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from runs.models import Run

    user, key, agent = made["bench"]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = json.dumps({"input": {"message": "hello"}, "max_tokens": 16})
    run_id = {}

    def post():
        response = client.post(f"/api/v1/agents/{agent.pk}/run", body, content_type="application/json")
        run_id.setdefault("id", response.json()["id"])
        return response

    requests = {
        "POST /agents/{id}/run": post,
        "GET /runs/{id}": lambda: client.get(f"/api/v1/runs/{run_id['id']}"),
        "GET /usage": lambda: client.get("/api/v1/usage"),
    }
    # A settled run, so GET /usage has a by_model line to read.
    post()
    Run.objects.filter(pk=run_id["id"]).update(status="completed", input_tokens=10, output_tokens=5)
    from runs.services import run_settle as usage_settle

    usage_settle(run_id["id"])

    rows, sql = {}, {}
    for name, call in requests.items():
        for _ in range(5):
            call()  # warm-up: the rules snapshot, connection, caches
        counts = []
        for _ in range(calls):
            with CaptureQueriesContext(connection) as captured:
                response = call()
            assert response.status_code in (200, 202), response.content
            counts.append(len(captured.captured_queries))
        sql[name] = [q["sql"][:160] for q in captured.captured_queries]
        rows[name] = {
            "median": statistics.median(counts),
            "max": max(counts),
            "target": TARGETS[name],
            "target_met": statistics.median(counts) <= TARGETS[name],
        }
        print(
            f"{name}: median {rows[name]['median']} queries, max {rows[name]['max']} "
            f"(target <= {TARGETS[name]})"
        )
    result = {
        "what": "SQL queries per request after warm-up (median and max of repeated calls), "
        "autocommit, dispatch included",
        "calls": calls,
        "requests": rows,
        "sql": sql,
        "target": ", ".join(f"{k} <= {v}" for k, v in TARGETS.items()),
        "target_met": all(r["target_met"] for r in rows.values()),
        "max_note": "a max above the median is the rules-revision check, "
        "once per RULES_REFRESH_SECS per process",
    }
    common.save_result("queries", result)


if __name__ == "__main__":
    main()
