"""The whole local stack, `qwen-image up`, as a test fixture: one router and N workers."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import psutil
from PIL import Image

from support.processes import Service, answers, free_port, wait_until


class Stack:
    def __init__(self, tmp_path: Path, workers: int = 2, edit_workers: int = 0, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.images_dir = tmp_path / "images"
        # `up` numbers worker ports from a base; keep them consecutive and free.
        base = free_port()
        self.worker_ports = list(range(base, base + workers + edit_workers))
        self.worker_urls = [f"http://127.0.0.1:{p}" for p in self.worker_ports]
        self.service = Service(
            [
                "up",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--edit-workers",
                str(edit_workers),
                "--worker-base-port",
                str(base),
                "--host",
                "127.0.0.1",
            ],
            {"IMAGE_OUTPUT_DIR": str(self.images_dir), "DEVICE": "cpu", **env},
            tmp_path / "stack.log",
        )

    def start(self) -> Stack:
        self.service.start()
        try:
            for url in self.worker_urls:
                wait_until(lambda url=url: answers(url + "/readyz"), 90, f"worker {url}")
            wait_until(lambda: answers(self.url + "/readyz"), 30, "the router")
            wait_until(lambda: self.ready_workers() == len(self.worker_urls), 30, "all workers")
        except AssertionError:
            self.service.stop()
            raise AssertionError(
                f"the stack did not start; its log:\n{self.service.log()}"
            ) from None
        return self

    def stop(self) -> None:
        self.service.stop()

    def ready_workers(self) -> int:
        return router_ready_workers(self.url)

    def worker_process(self, worker_url: str) -> psutil.Process:
        """The child of `up` that serves `worker_url` (found by its PORT)."""
        port = worker_url.rsplit(":", 1)[1]
        for child in psutil.Process(self.service.pid).children():
            if child.environ().get("PORT") == port and "qwen_image_worker" in child.cmdline():
                return child
        raise AssertionError(f"no worker process serves {worker_url}")

    def busy_worker(self) -> str | None:
        for url in self.worker_urls:
            try:
                if httpx.get(url + "/internal/v1/load", timeout=1).json()["running"]:
                    return url
            except httpx.HTTPError:
                continue
        return None


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def router_ready_workers(url: str) -> int:
    """The workers the router at `url` counts as ready (its readyz needs only one)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("qwen_image_router_ready_workers "):
            return int(float(line.split()[-1]))
    return 0
