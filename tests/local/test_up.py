"""`qwen-image up` as a user starts it: flags that cannot work are refused before anything runs."""

from __future__ import annotations

import subprocess
import sys


def test_a_router_port_among_the_worker_ports_is_refused_naming_the_flags() -> None:
    # Worker 1 of two would take 6102, the router's port.
    done = subprocess.run(
        [sys.executable, "-m", "qwen_image_local", "up", "--port", "6102", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "--port 6102 is also worker 1's port" in done.stderr
    assert "--worker-base-port" in done.stderr
    assert "started" not in done.stderr
