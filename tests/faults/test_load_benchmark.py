"""benchmarks/load.py, briefly, as a program: its own stack, its report, and `lost: 0`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.processes import run_benchmark

pytestmark = pytest.mark.faults


def test_a_short_load_run_reports_every_request_and_loses_none(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    output = run_benchmark(
        "load.py",
        "--workers",
        "2",
        "--rate",
        "2",
        "--duration",
        "4",
        "--step-seconds",
        "0.01",
        "--json",
        str(out),
    )
    assert "lost: 0" in output and "throughput:" in output
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["lost"] == 0
    assert sum(report["outcomes"].values()) == report["requests"]
    assert report["ok"] == report["outcomes"].get("ok", 0) > 0
    assert 0 < report["utilisation"] <= 1
