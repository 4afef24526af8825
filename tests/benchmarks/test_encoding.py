"""benchmarks/encoding.py as a program: every format of every picture, sizes that differ."""

from __future__ import annotations

import re

from support.processes import run_benchmark


def test_a_small_run_reports_each_format_and_jpeg_is_smaller_than_png() -> None:
    output = run_benchmark("encoding.py", "--sizes", "64", "--repeats", "1")
    rows = re.findall(r"64x64 (noise|scene) (png|jpeg|webp) *: +[\d.]+ ms +([\d.]+) MB", output)
    assert [(picture, fmt) for picture, fmt, _ in rows] == [
        (picture, fmt) for picture in ("noise", "scene") for fmt in ("png", "jpeg", "webp")
    ]
    sizes = {(picture, fmt): float(mb) for picture, fmt, mb in rows}
    assert sizes[("noise", "jpeg")] < sizes[("noise", "png")]
