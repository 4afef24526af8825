"""Test 3: the router follows the worker Service's EndpointSlices in a real API server.

The slices point at real demo-model workers on 127.0.0.2-4. Each change is written through
the API; the router's registry must reflect it within two seconds of the write (the bound
the issue sets), and jobs go where that view says.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from k8s_helpers import (
    LoopbackWorker,
    RouterProcess,
    loopback_slice,
    router_kubeconfig,
    slice_name,
)
from kubernetes import client

from support.control_plane import ControlPlane
from support.processes import answers

pytestmark = pytest.mark.k8s

CONVERGE_SECONDS = 2.0


@pytest.mark.usefixtures("release")
def test_router_sends_jobs_to_the_ready_endpoints_it_watches(
    control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    loopback_workers: list[LoopbackWorker],
    tmp_path: Path,
) -> None:
    api = client.DiscoveryV1Api(admin)
    w0, w1, w2 = loopback_workers
    kubeconfig = router_kubeconfig(control_plane, namespace, tmp_path)
    router = RouterProcess(tmp_path, kubeconfig, namespace).start()

    def write(change: str, worker: LoopbackWorker, ready: bool = True) -> float:
        """Make one change through the API; returns when it was made."""
        at = time.monotonic()
        body = loopback_slice(namespace, worker, ready=ready)
        if change == "create":
            api.create_namespaced_endpoint_slice(namespace, body)
        elif change == "patch":
            api.patch_namespaced_endpoint_slice(slice_name(worker), namespace, body)
        else:
            api.delete_namespaced_endpoint_slice(slice_name(worker), namespace)
        return at

    def images() -> list[int]:
        return [w.images_made() for w in loopback_workers]

    try:
        assert router.workers() == set()
        assert answers(router.url + "/readyz", 503)

        # Discovered: of two endpoints only the ready one is a worker, and it gets the job.
        at = write("create", w0)
        write("create", w1, ready=False)
        router.wait_for_workers({w0.name}, CONVERGE_SECONDS, "w0 to be discovered", since=at)
        router.wait_ready()
        before = images()
        assert router.generate().status_code == 200
        assert [a - b for a, b in zip(images(), before, strict=True)] == [1, 0, 0]

        # w1 turns ready, then w0 not-ready: from then on w1 gets every job.
        at = write("patch", w1)
        router.wait_for_workers({w0.name, w1.name}, CONVERGE_SECONDS, "w1 ready", since=at)
        at = write("patch", w0, ready=False)
        router.wait_for_workers({w1.name}, CONVERGE_SECONDS, "w0 gone when not-ready", since=at)
        router.wait_ready()
        before = images()
        for _ in range(2):
            assert router.generate().status_code == 200
        assert [a - b for a, b in zip(images(), before, strict=True)] == [0, 2, 0]

        # w1's slice is deleted: no worker is left, and the router says so at once.
        at = write("delete", w1)
        router.wait_for_workers(set(), CONVERGE_SECONDS, "w1 gone when deleted", since=at)
        assert answers(router.url + "/readyz", 503)
        refused = router.generate()
        assert (refused.status_code, refused.json()) == (500, {"detail": "Task queue is full"})

        # A new ready endpoint receives jobs.
        at = write("create", w2)
        router.wait_for_workers({w2.name}, CONVERGE_SECONDS, "w2 to be discovered", since=at)
        router.wait_ready()
        before = images()
        assert router.generate().status_code == 200
        assert [a - b for a, b in zip(images(), before, strict=True)] == [0, 0, 1]
    finally:
        router.stop()
