"""The router process with DISCOVERY=kubernetes, in front of real demo-model workers.

The API server is the protocol stub from tests/support (a real control plane arrives with
the next issue); everything else is real: kubeconfig loading, the watch, HTTP to workers.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from support.k8s_api_stub import (
    EndpointSliceApiStub,
    endpoint,
    endpoint_slice,
    write_kubeconfig,
)
from support.processes import Service, answers, free_port, start_worker, wait_until

pytestmark = pytest.mark.integration

NAMESPACE = "qwen-image"
SERVICE = "qwen-image-worker"


def worker_slice(name: str, port: int, ready: bool) -> dict:
    return endpoint_slice(
        SERVICE,
        [endpoint("127.0.0.1", pod=name, ready=ready)],
        namespace=NAMESPACE,
        name=name,
        ports=(("http", port),),
    )


def generate(url: str) -> httpx.Response:
    body = {"prompt": "a tram", "size": "256x256", "num_inference_steps": 2}
    return httpx.post(url + "/v1/images/generations", json=body, timeout=60)


def images_made(worker_url: str) -> int:
    for line in httpx.get(worker_url + "/metrics").text.splitlines():
        if line.startswith("qwen_image_worker_images_generated_total "):
            return int(float(line.split()[-1]))
    return 0


def test_router_follows_endpointslices_of_the_worker_service(
    api: EndpointSliceApiStub, tmp_path: Path
) -> None:
    workers = [start_worker(tmp_path, name=f"worker-{i}") for i in range(2)]
    ports = [int(url.rsplit(":", 1)[1]) for _, url in workers]
    port = free_port()
    router_url = f"http://127.0.0.1:{port}"
    router = Service(
        ["router"],
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DISCOVERY": "kubernetes",
            "KUBECONFIG": str(write_kubeconfig(api, tmp_path / "kubeconfig")),
            "WORKER_SERVICE_NAME": SERVICE,
            "WORKER_NAMESPACE": NAMESPACE,
            "IMAGE_OUTPUT_DIR": str(tmp_path / "images"),
        },
        tmp_path / "router.log",
    ).start()
    try:
        # No endpoints yet: no worker, so the spec's saturation answer, at once.
        wait_until(lambda: answers(router_url + "/healthz"), 30, "the router to start")
        assert answers(router_url + "/readyz", 503)
        refused = generate(router_url)
        assert (refused.status_code, refused.json()) == (500, {"detail": "Task queue is full"})

        api.apply(worker_slice("worker-0", ports[0], ready=True))
        api.apply(worker_slice("worker-1", ports[1], ready=False))
        wait_until(lambda: answers(router_url + "/readyz"), 5, "worker-0 to be discovered")
        assert generate(router_url).status_code == 200

        # worker-0 turns not-ready, worker-1 ready: jobs move within the poll interval.
        api.apply(worker_slice("worker-0", ports[0], ready=False))
        api.apply(worker_slice("worker-1", ports[1], ready=True))
        wait_until(
            lambda: (
                'worker="worker-1"' in httpx.get(router_url + "/metrics").text
                and 'worker="worker-0"' not in httpx.get(router_url + "/metrics").text
            ),
            5,
            "the router to swap workers",
        )
        assert generate(router_url).status_code == 200
        assert [images_made(url) for _, url in workers] == [1, 1]

        # The slice is deleted: no worker is left, and the router says so at once.
        api.delete(NAMESPACE, "worker-1")
        wait_until(lambda: answers(router_url + "/readyz", 503), 5, "the worker to disappear")
        assert generate(router_url).json() == {"detail": "Task queue is full"}
    finally:
        router.stop()
        for service, _ in workers:
            service.stop()
