"""Start the project's real programs as child processes and wait until they answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == status
    except httpx.HTTPError:
        return False


def run_benchmark(script: str, *args: str, timeout: float = 120) -> str:
    """Runs `benchmarks/<script>` as a user would and returns what it printed; a failure
    shows the end of its output."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / script
    done = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# Each program by its entry point: `python -m <package> [arguments]`.
_ENTRY_POINTS = {
    "router": ["qwen_image_router"],
    "worker": ["qwen_image_worker"],
    "up": ["qwen_image_local", "up"],
}


class Service:
    """One program (`router`, `worker` or `up` and its arguments) as a process with its own
    environment and log file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        full_env = os.environ | {"OMP_NUM_THREADS": "1", "LOG_LEVEL": "INFO"} | self.env
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *_ENTRY_POINTS[self.command[0]], *self.command[1:]],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(tmp_path: Path, name: str = "worker", **env: str) -> tuple[Service, str]:
    """A real worker with the demo model; returns it once /readyz says ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = Service(
        ["worker"],
        {"HOST": "127.0.0.1", "PORT": str(port), "DEVICE": "cpu", **env},
        tmp_path / f"{name}.log",
    ).start()
    try:
        wait_until(lambda: answers(url + "/readyz"), 60, f"{name} to become ready")
    except AssertionError:
        service.stop()
        raise AssertionError(f"{name} did not become ready; its log:\n{service.log()}") from None
    return service, url
