"""benchmarks/gpu_engine.py --tiny: the benchmark's own code path, run as a program on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_a_complete_report_whose_outputs_match(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_engine.py"), "--tiny", "--out", str(out)],
        env=os.environ | {"OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["outputs_match"] is True and report["complete"] is True
    assert report["device"] == "cpu" and report["errors"] == [] and report["skipped"] == []
    assert [row["size"] for row in report["rows"]] == ["256x256", "128x128"]
    for row in report["rows"]:
        for side in ("stock", "engine"):
            assert row[side]["steps"] == report["steps"]
            assert row[side]["total_s"] > 0 and row[side]["median_step_s"] > 0
            assert row[side]["extrapolated_50_steps_s"] > row[side]["total_s"]
        assert row["match"] is True and row["speedup"] > 0
        assert row["stock_spread"]["kernel"] == "math"
        for name in ("latents", "pixels"):
            assert 0 <= row[f"{name}_rel_error"] <= row["tolerance"][name]
            assert row["tolerance"][name] >= 0.03
    assert [(row["size"], row["batch"]) for row in report["throughput"]] == [
        ("128x128", 1),
        ("128x128", 2),
    ]
    assert all(row["stock"]["images_per_s"] > 0 for row in report["throughput"])
    assert all(row["engine"]["images_per_s"] > 0 for row in report["throughput"])
    assert report["levers"] == ["fuse_qkv", "vae_conv2d", "vae_channels_last", "attention_cudnn"]
    assert report["startup_warmup"]["sizes"] == ["64x64", "96x64"]
    queue = report["queue"]
    assert queue["jobs"] == 3 and 0 < queue["engine_busy_fraction"] <= 1
    assert "outputs_match: True" in done.stdout.splitlines()[-1]
