"""benchmarks/previews.py as a program: it times a job, a preview's decode, and a streamed
job that makes the previews a run of its steps allows."""

from __future__ import annotations

import re

from support.processes import run_benchmark


def test_a_small_run_reports_the_preview_share() -> None:
    output = run_benchmark(
        "previews.py",
        *("--sizes", "64", "--steps", "2", "--repeats", "1", "--device", "cpu"),
        timeout=300,
    )
    rows = re.findall(
        r"64x64: job ([\d.]+) s, a preview ([\d.]+) ms, (\d+) previews ([\d.]+) % of the job "
        r"\(job with them ([\d.]+) s\)",
        output,
    )
    # Two steps leave room for one preview (never at the last step) of the three asked.
    assert [count for _, _, count, _, _ in rows] == ["1"]
    job, preview, _, share, _ = (float(v) for v in rows[0])
    assert job > 0 and preview > 0 and share > 0
