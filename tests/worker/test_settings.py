"""A worker with a bad variable stops at start-up naming it, with no traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_bad_variable_stops_the_worker_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qwen_image_worker"],
        env=os.environ | {"TASK_QUEUE_SIZE": "-1", "DEVICE": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "invalid worker configuration:\n  TASK_QUEUE_SIZE: Input should be greater" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
