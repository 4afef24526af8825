"""Scheduling quality: least-loaded routing against round-robin and random.

For each worker count, real worker processes with the simulated engine are started once
and shared; for each policy (the routers' SCHEDULING_POLICY) and router count, that many
router processes are started in front of them, all sending to every worker; then for each
load level, Poisson arrivals at that fraction of the workers' simulated capacity
(load.py's request mix: jobs of different lengths) run for --duration seconds.

Reported per run: worker utilisation (the workers' busy time, from their own busy-seconds
metrics, over workers x the arrival window: the share of the offered capacity that was
served), the drain (last answer after the last arrival), p50/p95/p99 latency of the
answered requests, the queue-full rate, errors by kind, and lost requests (must be 0).

    .venv/bin/python benchmarks/scheduling.py                      # 16 and 64 workers
    .venv/bin/python benchmarks/scheduling.py --workers 16 --routers 3 --loads 0.5,1.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from load import (
    DEFAULT_MIX,
    LocalStack,
    local_stack,
    mean_service_seconds,
    run_load,
    worker_busy_seconds,
)

POLICIES = ("least-loaded", "round-robin", "random")


def _numbers(text: str, kind: type) -> list[Any]:
    return [kind(part) for part in text.split(",") if part.strip()]


def one_run(
    stack: LocalStack, policy: str, routers: int, load: float, args: argparse.Namespace
) -> dict[str, Any]:
    workers = len(stack.worker_urls)
    service = mean_service_seconds(DEFAULT_MIX, args.step_seconds)
    rate = load * workers / service
    busy_before = worker_busy_seconds(stack.worker_urls)
    report = asyncio.run(
        run_load(stack.router_urls, rate, args.duration, DEFAULT_MIX, args.task_timeout, args.seed)
    )
    busy = worker_busy_seconds(stack.worker_urls) - busy_before
    summary = report.summary()
    return {
        "workers": workers,
        "routers": routers,
        "policy": policy,
        "load": load,
        "rate": rate,
        "requests": report.requests,
        "utilisation": busy / (workers * args.duration),
        "drain": max(0.0, report.window - args.duration),
        "p50": summary["latency_ok_s"]["p50"],
        "p95": summary["latency_ok_s"]["p95"],
        "p99": summary["latency_ok_s"]["p99"],
        "queue_full_rate": summary["queue_full_rate"],
        "errors": {k: v for k, v in summary["outcomes"].items() if k != "ok"},
        "lost": report.lost,
    }


def print_row(row: dict[str, Any]) -> None:
    print(
        f"| {row['workers']} | {row['routers']} | {row['policy']} | {row['load']:.0%} "
        f"| {row['requests']} | {row['utilisation']:.1%} | {row['drain']:.1f} "
        f"| {row['p50']:.2f} | {row['p95']:.2f} "
        f"| {row['p99']:.2f} | {row['queue_full_rate']:.1%} | {row['lost']} "
        f"| {json.dumps(row['errors']) if row['errors'] else '-'} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="16,64", help="worker counts, comma-separated")
    parser.add_argument("--routers", default="1,3", help="router counts, comma-separated")
    parser.add_argument("--loads", default="0.5,0.75,0.9,1.0", help="fractions of capacity")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals a run")
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--task-queue-size", type=int, default=4)
    parser.add_argument("--task-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    if unknown := set(policies) - set(POLICIES):
        raise SystemExit(f"unknown policies: {sorted(unknown)}")

    rows: list[dict[str, Any]] = []
    print(
        f"mean simulated job {mean_service_seconds(DEFAULT_MIX, args.step_seconds):.2f} s, "
        f"TASK_QUEUE_SIZE {args.task_queue_size}, {args.duration:.0f} s of arrivals a run"
    )
    print(
        "| workers | routers | policy | load | requests | utilisation | drain s | p50 s | p95 s "
        "| p99 s | queue full | lost | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for workers in _numbers(args.workers, int):
        with local_stack() as stack:
            started = time.monotonic()
            stack.start_workers(workers, args.step_seconds, args.task_queue_size)
            print(
                f"({workers} workers ready in {time.monotonic() - started:.0f} s)", file=sys.stderr
            )
            for routers in _numbers(args.routers, int):
                for policy in policies:
                    env = {"SCHEDULING_POLICY": policy, "TASK_TIMEOUT": str(args.task_timeout)}
                    router_processes = stack.start_routers(routers, env)
                    for load in _numbers(args.loads, float):
                        row = one_run(stack, policy, routers, load, args)
                        rows.append(row)
                        print_row(row)
                    stack.stop(router_processes)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    if any(row["lost"] for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
