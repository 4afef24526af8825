"""Real router and worker processes on loopback for the fault tests, and small servers of
the tests' own (run in a thread, so the tests stay plain synchronous code).

Workers run the simulated engine (MODEL_PATH=simulated): every denoising step is a short
sleep, so a job takes as long as the test wants while the queue, HTTP API, metrics and
drain are the real ones.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from support.processes import Service, answers, free_port, wait_until

GENERATE = "/v1/images/generations"
# Seconds one simulated denoising step takes; a job of `steps` steps takes steps x this.
STEP_SECONDS = 0.05
# Router settings of every fault test: quick polling, so faults are noticed in a second.
ROUTER_DEFAULTS = {
    "LOAD_POLL_INTERVAL_SECONDS": "0.1",
    "LOAD_STALE_AFTER_SECONDS": "1.0",
    "TASK_TIMEOUT": "20",
}


@dataclass
class Proc:
    """One running program of the project and its base URL."""

    service: Service
    url: str
    # Where /metrics is served: METRICS_PORT's address when the router has one.
    metrics_url: str | None = None

    def metrics(self) -> str:
        return httpx.get(self.metrics_url or self.url + "/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics(), name, **labels)

    def load(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.url + "/internal/v1/load", timeout=5).json()
        return body

    def stop(self) -> None:
        self.service.stop()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` of Prometheus text; 0 when a labelled series never counted."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    if labels:
        return 0.0
    raise AssertionError(f"no sample {name} in metrics")


def start_worker(tmp_path: Path, name: str = "worker", *, ready: bool = True, **env: str) -> Proc:
    """A real worker process with the simulated engine; by default once it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    values = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_PATH": "simulated",
        "SIMULATED_STEP_SECONDS": str(STEP_SECONDS),
        "WARMUP_STEPS": "1",
        "DRAIN_TIMEOUT_SECONDS": "30",
        **env,
    }
    service = Service(["worker"], values, tmp_path / f"{name}.log").start()
    if ready:
        _wait_or_explain(service, lambda: answers(url + "/readyz"), 60, name)
    else:
        _wait_or_explain(service, lambda: answers(url + "/healthz"), 60, name)
    return Proc(service, url)


def start_router(
    tmp_path: Path,
    worker_urls: list[str],
    name: str = "router",
    *,
    port: int | None = None,
    ready_workers: int | None = None,
    **env: str,
) -> Proc:
    """A real router process over `worker_urls`; returns once it sees `ready_workers` ready
    (default: all of them)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    values = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DISCOVERY": "static",
        "WORKER_URLS": ",".join(worker_urls),
        "IMAGE_OUTPUT_DIR": str(tmp_path / "images"),
        **ROUTER_DEFAULTS,
        **env,
    }
    service = Service(["router"], values, tmp_path / f"{name}.log").start()
    metrics_port = int(values.get("METRICS_PORT", "0"))
    proc = Proc(service, url, f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None)
    expected = len(worker_urls) if ready_workers is None else ready_workers
    _wait_or_explain(service, lambda: answers(url + "/healthz"), 30, name)
    _wait_or_explain(service, lambda: ready_count(proc) == expected, 30, f"{name} to see workers")
    return proc


def ready_count(router: Proc) -> int:
    try:
        return int(router.metric("qwen_image_router_ready_workers"))
    except httpx.HTTPError:
        return -1


def _wait_or_explain(service: Service, check: Any, timeout: float, what: str) -> None:
    try:
        wait_until(check, timeout, what)
    except AssertionError:
        service.stop()
        raise AssertionError(f"{what} did not start; its log:\n{service.log()}") from None


def generate(url: str, timeout: float, **body: Any) -> httpx.Response:
    """One generation request on a connection of its own."""
    return httpx.post(url + GENERATE, json={"prompt": "a fault test", **body}, timeout=timeout)


def spec_error(response: httpx.Response) -> str:
    """The detail of one of the spec's error answers; fails on anything else."""
    assert response.status_code in (400, 500), (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    return str(body["detail"])


class _QuietServer(uvicorn.Server):
    """Leaves signal handlers alone: it runs in a thread beside the test."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port from a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "the test's server")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
