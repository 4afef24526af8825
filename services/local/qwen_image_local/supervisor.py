"""One router and N workers as child processes on this machine, started by their entry points.

Each worker is pinned to one GPU through CUDA_VISIBLE_DEVICES; with no GPU, CPU workers
run the demo models (the generator and the editor) and share the cores. A worker that dies
is restarted (with a delay that grows while it keeps dying); Ctrl-C or SIGTERM drains every
child and waits for it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from qwen_image_worker.engine.model_kind import DEMO_EDIT_MODEL_PATH, DEMO_MODEL_PATHS
from qwen_image_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

# What edit workers serve: EDIT_MODEL_PATH, else the built-in demo editor, under this name.
EDIT_MODEL_NAME = "Qwen-Image-Edit-2509"
_RESTART_DELAY_MAX_SECONDS = 30.0
_STOP_GRACE_SECONDS = 60.0


@dataclass
class ChildSpec:
    name: str
    command: list[str]
    env: dict[str, str]
    restart: bool
    model: str = ""  # the model a worker serves; none for the router


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


def default_edit_workers(gpus: int, workers: int | None, env: Mapping[str, str]) -> int:
    """Editors when `--edit-workers` is not given. On a CPU: one demo editor beside the demo
    generators (or one of EDIT_MODEL_PATH). On GPUs: editors only for EDIT_MODEL_PATH, on the
    GPUs the generators leave: half of them when `--workers` is not given either."""
    edit_model = env.get("EDIT_MODEL_PATH", "").strip()
    if not gpus:
        demo = env.get("MODEL_PATH", "demo").strip().lower() in DEMO_MODEL_PATHS
        return 1 if demo or edit_model else 0
    if not edit_model:
        return 0
    budget = int(env.get("NUM_GPUS_TO_USE") or gpus)
    editors = budget - workers if workers is not None else budget // 2
    if editors < 1:
        logger.warning(
            "EDIT_MODEL_PATH is set, but no GPU is left for an editor (%d GPU(s), %s for "
            "the generator): serving without one; --workers and --edit-workers split them",
            budget,
            workers if workers is not None else budget,
        )
    return max(0, editors)


def plan_stack(
    port: int,
    workers: int | None,
    worker_base_port: int,
    host: str,
    edit_workers: int | None = None,
    *,
    gpus: int,
    env: Mapping[str, str],
) -> list[ChildSpec]:
    """The children `up` runs: the workers first (the editors on the ports and GPUs after
    the generators), then the router that knows their URLs. `gpus` visible GPUs, `env` the
    environment the children inherit."""
    if edit_workers is None:
        edit_workers = default_edit_workers(gpus, workers, env)
    if edit_workers < 0:
        raise SystemExit("qwen-image up: --edit-workers must be at least 0")
    if workers is None:
        budget = int(env.get("NUM_GPUS_TO_USE") or gpus or 1)
        workers = budget - edit_workers if gpus else budget
    if workers < 1:
        raise SystemExit(
            "qwen-image up: --workers (or NUM_GPUS_TO_USE less --edit-workers) must be at least 1"
        )
    total = workers + edit_workers
    if gpus and total > gpus:
        raise SystemExit(
            f"qwen-image up: {workers} generator and {edit_workers} edit worker(s) asked for, "
            f"but {gpus} GPUs are visible (one worker a GPU)"
        )
    worker_ports = range(worker_base_port, worker_base_port + total)
    if port in worker_ports:
        raise SystemExit(
            f"qwen-image up: --port {port} is also worker {port - worker_base_port}'s port "
            f"(workers take {worker_ports[0]}-{worker_ports[-1]}); change --port or "
            "--worker-base-port"
        )
    cpu_threads = max(1, (os.cpu_count() or 1) // total)
    generator = env.get("MODEL_NAME") or WorkerSettings.model_fields["model_name"].default
    editor = {
        "MODEL_PATH": env.get("EDIT_MODEL_PATH") or DEMO_EDIT_MODEL_PATH,
        "MODEL_NAME": EDIT_MODEL_NAME,
    }
    specs = []
    for i, worker_port in enumerate(worker_ports):
        edits = i >= workers
        spec_env = {"HOST": "127.0.0.1", "PORT": str(worker_port)} | (editor if edits else {})
        if gpus:
            spec_env |= {"CUDA_VISIBLE_DEVICES": str(i), "DEVICE": "cuda"}
        else:
            spec_env |= {"DEVICE": "cpu", "OMP_NUM_THREADS": str(cpu_threads)}
        name = f"edit-worker-{i - workers}" if edits else f"worker-{i}"
        model = EDIT_MODEL_NAME if edits else generator
        specs.append(
            ChildSpec(name, _entry_point("qwen_image_worker"), spec_env, restart=True, model=model)
        )
    router_env = {
        "HOST": host,
        "PORT": str(port),
        "DISCOVERY": "static",
        "WORKER_URLS": ",".join(f"http://127.0.0.1:{p}" for p in worker_ports),
    }
    specs.append(ChildSpec("router", _entry_point("qwen_image_router"), router_env, restart=False))
    return specs


def describe(specs: list[ChildSpec]) -> str:
    """What the stack serves, where: the router's URL, then each model and its workers."""
    (router,) = [spec for spec in specs if not spec.model]
    host = router.env["HOST"]
    lines = [
        f"serving http://{'localhost' if host == '0.0.0.0' else host}:{router.env['PORT']}/v1:"
    ]
    for model in dict.fromkeys(spec.model for spec in specs if spec.model):
        workers = [_where(spec) for spec in specs if spec.model == model]
        lines.append(f"  {model}: {', '.join(workers)}")
    return "\n".join(lines)


def _where(worker: ChildSpec) -> str:
    gpu = worker.env.get("CUDA_VISIBLE_DEVICES")
    return f"{worker.name} (:{worker.env['PORT']}, {'GPU ' + gpu if gpu else 'CPU'})"


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
