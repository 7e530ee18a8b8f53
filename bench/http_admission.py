"""Benchmark 2: POST /agents/{id}/run under gunicorn (2 sync workers), 8 and 32 concurrent clients.

Baseline, in the same app and the same run: POST /bench/baseline (bench/benchapp, installed only by
bench.settings), which authenticates the key like every endpoint, inserts one row and publishes one
Celery message. Both take the same body from the same load generator (wrk), alternating, so a noisy
neighbour hits both alike. No worker runs: messages wait in a private Redis. Reported per concurrency:
throughput, p50 and p99 of each, the throughput ratio (target >= 0.6), and the CPU each request costs
in web, PostgreSQL (our backends) and Redis.

    python bench/http_admission.py [--quick]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BODY = json.dumps(
    {"input": {"message": "Summarize: the quick brown fox jumps over the lazy dog."}, "max_tokens": 16}
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    secs, rounds = (3, 1) if args.quick else (10, 2)

    logs = common.log_dir("http")
    redis = common.Redis()
    web = None
    try:
        common.recreate_database()
        common.django_setup(redis.url(0))
        made = common.migrate_and_seed()
        _, key, agent = made["bench"]
        env = common.stack_env(broker_url=redis.url(0), anthropic_url="http://127.0.0.1:9")
        web, url = common.start_web(env, logs, workers=2)
        endpoints = {"baseline": url + "/bench/baseline", "run": f"{url}/api/v1/agents/{agent.pk}/run"}
        for target in endpoints.values():  # warm-up: imports, connections, the rules snapshot
            warm = common.wrk(target, key=key, body=BODY, connections=4, seconds=1)
            assert warm["ok"] == warm["requests"], (target, warm)

        groups = {
            "web": lambda: common.descendants(web.proc.pid),
            "postgres (our backends)": common.pg_backend_pids,
            "redis": lambda: [redis.pid],
        }
        rows = []
        for connections in (8, 32):
            figures = {name: [] for name in endpoints}
            for _ in range(rounds):
                for name, target in endpoints.items():
                    meter = common.CpuMeter(groups)
                    meter.start()
                    load = common.wrk(target, key=key, body=BODY, connections=connections, seconds=secs)
                    cpu = meter.stop()
                    load["cpu_ms_per_request"] = common.per_op_ms(cpu, load["ok"])
                    figures[name].append(load)
                    print(
                        f"  c={connections} {name}: {load['rps']} req/s, p50 {load['p50_ms']} ms, "
                        f"p99 {load['p99_ms']} ms, statuses {load['statuses']}, "
                        f"cpu/req {load['cpu_ms_per_request']}"
                    )
            row = {"connections": connections}
            for name, loads in figures.items():
                ok = sum(load["ok"] for load in loads)
                seconds = sum(load["seconds"] for load in loads)
                row[name] = {
                    "rps": round(ok / seconds, 1),
                    "p50_ms": round(sum(load["p50_ms"] for load in loads) / len(loads), 2),
                    "p99_ms": round(sum(load["p99_ms"] for load in loads) / len(loads), 2),
                    "requests": sum(load["requests"] for load in loads),
                    "non_2xx": sum(load["requests"] - load["ok"] for load in loads),
                    "socket_errors": sum(load["socket_errors"] for load in loads),
                    "cpu_ms_per_request": {
                        group: round(
                            sum(load["cpu_ms_per_request"][group] * load["ok"] for load in loads) / ok, 3
                        )
                        for group in loads[0]["cpu_ms_per_request"]
                    },
                }
            row["ratio"] = round(row["run"]["rps"] / row["baseline"]["rps"], 3)
            rows.append(row)
            print(
                f"c={connections}: run {row['run']['rps']} req/s "
                f"vs baseline {row['baseline']['rps']} req/s, ratio {row['ratio']}"
            )
        result = {
            "what": "POST /agents/{id}/run under gunicorn (2 sync workers), wrk, throughput and latency",
            "baseline": "POST /bench/baseline: authenticate the key, insert one row, "
            "publish one Celery message",
            "seconds_per_load": secs,
            "rounds": rounds,
            "rows": rows,
            "target": "throughput ratio >= 0.6",
            "target_met": all(r["ratio"] >= 0.6 for r in rows),
        }
        common.save_result("http_admission", result)
    finally:
        if web:
            web.stop()
        redis.stop()


if __name__ == "__main__":
    main()
