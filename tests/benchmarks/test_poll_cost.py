"""benchmarks/poll_cost.py as a program: both clients poll real servers and say so."""

from __future__ import annotations

import re

from support.processes import run_benchmark


def test_a_short_run_reports_both_clients_keeping_every_report_fresh() -> None:
    output = run_benchmark("poll_cost.py", "--workers", "4", "--interval", "0.2", "--seconds", "1")
    rows = re.findall(
        r"(\d+) workers, (shared pool|pool per worker)\s*: +([\d.]+) polls/s \(asked (\d+)\), "
        r"CPU +[\d.]+ % of a core, ([\d.]+) ms a poll, (\d+)/(\d+) reports fresh; "
        r"first round [\d.]+ ms a worker",
        output,
    )
    assert [(count, name) for count, name, *_ in rows] == [
        ("4", "shared pool"),
        ("4", "pool per worker"),
    ]
    for _, _, polls, asked, ms, fresh, of in rows:
        # 20 polls a second asked of 4 workers; how many it does is the benchmark's figure.
        assert asked == "20" and float(polls) > 0
        assert float(ms) > 0 and fresh == of == "4"
    assert "CPU a poll, shared pool / pool per worker:" in output
