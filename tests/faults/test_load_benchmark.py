"""benchmarks/load.py, briefly, as a program: its own stack, its report, and `lost: 0`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.faults


def test_a_short_load_run_reports_every_request_and_loses_none(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "load.py"),
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
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lost: 0" in done.stdout and "throughput:" in done.stdout
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["lost"] == 0
    assert sum(report["outcomes"].values()) == report["requests"]
    assert report["ok"] == report["outcomes"].get("ok", 0) > 0
    assert 0 < report["utilisation"] <= 1
