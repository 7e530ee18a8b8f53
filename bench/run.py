"""Run every benchmark (each in a process of its own), then print the table from bench/results.json.

    python bench/run.py [--quick] [--only gate queries ...] [--table]

--quick is a smoke check (seconds per benchmark, small sizes): its figures are not the ones to quote.
--table only prints the table of the results already in bench/results.json (and its Markdown).
Every figure is a ratio to a baseline measured in the same run, or an absolute next to its baseline."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BENCHMARKS = [
    "gate", "queries", "http_admission", "worker_throughput", "ledger_scale", "gateways", "in_flight",
    "streams",
]  # fmt: skip


def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


def table_rows(results: dict) -> list[tuple]:
    """(#, what, figure, baseline, ratio, target, met) per line of the issue's table."""
    rows = []
    r = results.get("gate")
    if r:
        rows.append(
            (
                "1",
                f"gate decision, {r['requests']:,} mixed requests",
                f"median {r['median_us']} µs (p99 {r['p99_us']} µs), "
                f"{r['queries_after_warmup']} queries after warm-up",
                "—",
                "—",
                "median ≤ 2 µs, 0 queries",
                r["target_met"],
            )
        )
    r = results.get("http_admission")
    if r:
        for row in r["rows"]:
            run, base = row["run"], row["baseline"]
            rows.append(
                (
                    "2",
                    f"POST /agents/{{id}}/run, gunicorn 2 workers, {row['connections']} clients",
                    f"{fmt(run['rps'])} req/s, p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms",
                    f"{fmt(base['rps'])} req/s, p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms "
                    "(auth + 1 INSERT + 1 publish)",
                    f"{row['ratio']:.2f}",
                    "≥ 0.6",
                    row["ratio"] >= 0.6,
                )
            )
    r = results.get("queries")
    if r:
        figure = ", ".join(
            f"{name} {v['median']:g}" + (f" (max {v['max']})" if v["max"] != v["median"] else "")
            for name, v in r["requests"].items()
        )
        target = ", ".join(f"≤ {v['target']}" for v in r["requests"].values())
        rows.append(("3", "queries per request", figure, "—", "—", target, r["target_met"]))
    r = results.get("worker_throughput")
    if r:
        rows.append(
            (
                "4",
                "completed runs/s, one worker -c 2, zero-latency emulator",
                f"{fmt(r['runs']['per_second'])} runs/s",
                f"{fmt(r['noop']['per_second'])} no-op tasks/s",
                f"{r['ratio']:.3f}",
                "≥ 0.5",
                r["target_met"],
            )
        )
        if "runs_without_provider" in r:  # results of runs before the breakdown have none
            rows.append(
                (
                    "4",
                    "breakdown: the same runs without their provider call (claim, settlement, alerts)",
                    f"{fmt(r['runs_without_provider']['per_second'])} runs/s",
                    f"{fmt(r['noop']['per_second'])} no-op tasks/s",
                    f"{r['ratio_without_provider']:.3f}",
                    "— (the most #4 could reach)",
                    None,  # no target of its own
                )
            )
    r = results.get("ledger_scale")
    if r:
        base, top = r["rows"][0], r["rows"][-1]
        rows.append(
            (
                "5",
                f"admission / GET /usage at {top['ledger_rows']:,} ledger rows",
                f"{top['admission_ms']} ms / {top['usage_ms']} ms",
                f"{base['admission_ms']} ms / {base['usage_ms']} ms at {base['ledger_rows']:,} rows",
                f"{r['ratio_admission']:.2f} / {r['ratio_usage']:.2f}",
                "≤ 1.2",
                r.get("target_met", r["ratio_admission"] <= 1.2 and r["ratio_usage"] <= 1.2),
            )
        )
    r = results.get("gateways")
    if r:
        for row in r["rows"]:
            ours, theirs = row["maschina"], row["litellm"]
            rows.append(
                (
                    "6",
                    f"gated, billed calls/s end to end, {row['connections']} clients",
                    f"{fmt(ours['per_second'])} calls/s",
                    f"LiteLLM proxy {fmt(theirs['per_second'])} calls/s",
                    f"{row['ratio']:.2f}",
                    "≥ 1.5",
                    row["ratio"] >= 1.5,
                )
            )
    r = results.get("in_flight")
    if r:
        ours, theirs = r["maschina"], r["litellm"]
        held = r.get("backlog", ours)
        rows.append(
            (
                "7",
                f"completed runs/s at {r['delay_secs']} s provider latency, {r['clients']} clients, "
                "one node; "
                f"peak {ours['peak_in_flight']} in flight ({held['peak_in_flight']} on a backlog), "
                f"{max(ours['peak_db_connections'], held['peak_db_connections'])} connections, "
                f"{held['rss_kib_per_in_flight_run']} KiB per run in flight",
                f"{fmt(ours['per_second'])} runs/s",
                f"LiteLLM proxy {fmt(theirs['per_second'])} calls/s",
                f"{r['ratio']:.2f}",
                "≥ 2.5; ≥ 1000 in flight, ≤ 20 connections, ≤ 64 KiB",
                r["target_met"],
            )
        )
    r = results.get("streams")
    if r:
        adm, mem, lat = r["admission"], r["memory"], r["latency"]
        rows.append(
            (
                "8",
                f"POST /agents/{{id}}/run under uvicorn (2 workers), 32 clients, {r['held_streams_open']} "
                f"event streams held; delta latency at {lat['streaming_runs']} streaming runs",
                f"{fmt(adm['with_streams_rps'])} req/s; {mem['kb_per_stream']} KB per stream; "
                f"delta p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms",
                f"{fmt(adm['without_streams_rps'])} req/s without streams",
                f"{adm['ratio']:.2f}",
                "≥ 0.9; ≤ 50 KB per stream; p99 ≤ 50 ms",
                r["target_met"],
            )
        )
    return rows


def cpu_lines(results: dict) -> list[str]:
    lines = []
    r = results.get("gateways")
    if r:
        for row in r["rows"]:
            for name in ("maschina", "litellm"):
                cpu = row[name]["cpu_ms_per_call"]
                total = sum(v for k, v in cpu.items() if k != "bench process")
                parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "bench process")
                lines.append(
                    f"#6 {name}, {row['connections']} clients: {total:.1f} ms CPU per call ({parts})"
                )
    r = results.get("worker_throughput")
    if r:
        for name in ("runs", "runs_without_provider", "noop"):
            if name not in r:
                continue
            cpu = r[name]["cpu_ms_per_op"]
            lines.append(
                f"#4 {name}: "
                + ", ".join(
                    f"{k} {v:.2f}" for k, v in cpu.items() if k not in ("bench process", "load generator")
                )
                + " ms CPU per op"
            )
    r = results.get("http_admission")
    if r:
        for row in r["rows"]:
            for name in ("run", "baseline"):
                cpu = row[name]["cpu_ms_per_request"]
                lines.append(
                    f"#2 {name}, {row['connections']} clients: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "bench process")
                    + " ms CPU per request"
                )
    return lines


def markdown(results: dict) -> str:
    # The machine and commit of the benchmark that finished last (finished_at is ISO 8601 in UTC).
    latest = max(
        (r for r in results.values() if isinstance(r, dict) and "machine" in r),
        key=lambda r: r.get("finished_at", ""),
        default={},
    )
    m = latest.get("machine", {})
    out = [
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gb')} GB, "
        f"Python {m.get('python')}, {m.get('platform')}; "
        f"commit {latest.get('commit')}, finished {latest.get('finished_at')}",
        "",
        "| # | what | figure | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table_rows(results):
        met = "—" if row[6] is None else "yes" if row[6] else "**no**"
        out.append("| " + " | ".join(str(c) for c in row[:6]) + f" | {met} |")
    lines = cpu_lines(results)
    if lines:
        out += [
            "",
            "CPU per operation (utime + stime of each process tree, over the load, divided by operations):",
            "",
        ]
        out += [f"- {line}" for line in lines]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke check: small sizes, seconds per load")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS)
    parser.add_argument("--table", action="store_true", help="only print the table of bench/results.json")
    args = parser.parse_args()
    if not args.table:
        failed = []
        for name in args.only or BENCHMARKS:
            print(f"== {name}", flush=True)
            started = time.monotonic()
            argv = [common.PYTHON, str(common.ROOT / "bench" / f"{name}.py")] + (
                ["--quick"] if args.quick else []
            )
            code = subprocess.call(argv, cwd=common.ROOT)
            print(
                f"== {name}: {'ok' if code == 0 else f'FAILED ({code})'} "
                f"in {time.monotonic() - started:.0f} s",
                flush=True,
            )
            if code:
                failed.append(name)
        results = json.loads(common.RESULTS.read_text()) if common.RESULTS.exists() else {}
        results["_run"] = {
            "quick": args.quick,
            "benchmarks": args.only or BENCHMARKS,
            "failed": failed,
            "machine": common.machine(),
            "commit": common.git_commit(),
        }
        common.RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    results = json.loads(common.RESULTS.read_text())
    print()
    print(markdown({k: v for k, v in results.items() if not k.startswith("_")}))
    if not args.table and results["_run"]["failed"]:
        sys.exit(f"failed: {', '.join(results['_run']['failed'])}")


if __name__ == "__main__":
    main()
