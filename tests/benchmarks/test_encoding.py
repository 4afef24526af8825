"""benchmarks/encoding.py as a program: every format of every picture, sizes that differ."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_run_reports_each_format_and_jpeg_is_smaller_than_png() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "encoding.py"),
            "--sizes",
            "64",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = re.findall(
        r"64x64 (noise|scene) (png|jpeg|webp) *: +[\d.]+ ms +([\d.]+) MB", done.stdout
    )
    assert [(picture, fmt) for picture, fmt, _ in rows] == [
        (picture, fmt) for picture in ("noise", "scene") for fmt in ("png", "jpeg", "webp")
    ]
    sizes = {(picture, fmt): float(mb) for picture, fmt, mb in rows}
    assert sizes[("noise", "jpeg")] < sizes[("noise", "png")]
