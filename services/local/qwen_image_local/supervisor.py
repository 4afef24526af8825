"""One router and N workers as child processes on this machine, started by their entry points.

Each worker is pinned to one GPU through CUDA_VISIBLE_DEVICES; with no GPU, CPU workers
run the demo model and share the cores. A worker that dies is restarted (with a delay
that grows while it keeps dying); Ctrl-C or SIGTERM drains every child and waits for it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# What `--edit-workers` serve: EDIT_MODEL_PATH, else the built-in demo editor, under this name.
EDIT_MODEL_NAME = "Qwen-Image-Edit-2509"
DEMO_EDIT_MODEL_PATH = "demo-edit"
_RESTART_DELAY_MAX_SECONDS = 30.0
_STOP_GRACE_SECONDS = 60.0


@dataclass
class ChildSpec:
    name: str
    command: list[str]
    env: dict[str, str]
    restart: bool


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = field(default=0.0)


def visible_gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def plan_stack(
    port: int, workers: int | None, worker_base_port: int, host: str, edit_workers: int = 0
) -> list[ChildSpec]:
    """The children `up` runs: the workers first (`edit_workers` of them serve the editor,
    on the ports and GPUs after the others), then the router that knows their URLs."""
    gpus = visible_gpu_count()
    env_gpus = os.environ.get("NUM_GPUS_TO_USE")
    if workers is None:
        workers = int(env_gpus) if env_gpus else (gpus or 1)
    if workers < 1:
        raise SystemExit("qwen-image up: --workers (or NUM_GPUS_TO_USE) must be at least 1")
    if edit_workers < 0:
        raise SystemExit("qwen-image up: --edit-workers must be at least 0")
    total = workers + edit_workers
    if gpus and total > gpus:
        raise SystemExit(f"qwen-image up: {total} workers asked for, but {gpus} GPUs are visible")
    worker_ports = range(worker_base_port, worker_base_port + total)
    if port in worker_ports:
        raise SystemExit(
            f"qwen-image up: --port {port} is also worker {port - worker_base_port}'s port "
            f"(workers take {worker_ports[0]}-{worker_ports[-1]}); change --port or "
            "--worker-base-port"
        )
    cpu_threads = max(1, (os.cpu_count() or 1) // total)
    editor = {
        "MODEL_PATH": os.environ.get("EDIT_MODEL_PATH", DEMO_EDIT_MODEL_PATH),
        "MODEL_NAME": EDIT_MODEL_NAME,
    }
    specs = []
    for i, worker_port in enumerate(worker_ports):
        env = {"HOST": "127.0.0.1", "PORT": str(worker_port)} | (editor if i >= workers else {})
        if gpus:
            env |= {"CUDA_VISIBLE_DEVICES": str(i), "DEVICE": "cuda"}
        else:
            env |= {"DEVICE": "cpu", "OMP_NUM_THREADS": str(cpu_threads)}
        name = f"edit-worker-{i - workers}" if i >= workers else f"worker-{i}"
        specs.append(ChildSpec(name, _entry_point("qwen_image_worker"), env, restart=True))
    router_env = {
        "HOST": host,
        "PORT": str(port),
        "DISCOVERY": "static",
        "WORKER_URLS": ",".join(f"http://127.0.0.1:{p}" for p in worker_ports),
    }
    specs.append(ChildSpec("router", _entry_point("qwen_image_router"), router_env, restart=False))
    return specs


def _entry_point(service_package: str) -> list[str]:
    """A service's own `python -m` entry point, run by this interpreter (this venv)."""
    return [sys.executable, "-m", service_package]


class Supervisor:
    """Starts the children, restarts dying workers, stops everything on request."""

    def __init__(self, specs: list[ChildSpec]) -> None:
        self._children = [_Child(spec) for spec in specs]
        self._stopping = threading.Event()

    def request_stop(self, *_: object) -> None:
        self._stopping.set()

    def run(self) -> int:
        for child in self._children:
            self._start(child)
        exit_code = 0
        while not self._stopping.wait(0.2):
            for child in self._children:
                code = child.process.poll() if child.process else None
                if child.process is not None and code is None:
                    continue
                if child.process is not None:
                    logger.warning("%s exited with code %s", child.spec.name, code)
                    if not child.spec.restart:
                        exit_code = 1
                        self._stopping.set()
                        break
                    child.process = None
                    child.restarts += 1
                    delay = min(_RESTART_DELAY_MAX_SECONDS, 2.0 ** (child.restarts - 1))
                    child.next_start = time.monotonic() + delay
                    logger.info("restarting %s in %.0f s", child.spec.name, delay)
                elif time.monotonic() >= child.next_start:
                    self._start(child)
        self._stop_all()
        return exit_code

    def _start(self, child: _Child) -> None:
        env = os.environ | child.spec.env
        # Own session: Ctrl-C reaches only `up`, which then drains the children in order.
        child.process = subprocess.Popen(child.spec.command, env=env, start_new_session=True)
        logger.info(
            "started %s (pid %d): %s",
            child.spec.name,
            child.process.pid,
            " ".join(f"{k}={v}" for k, v in sorted(child.spec.env.items())),
        )

    def _stop_all(self) -> None:
        running = [
            c.process for c in reversed(self._children) if c.process and c.process.poll() is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
        logger.info("all services stopped")
