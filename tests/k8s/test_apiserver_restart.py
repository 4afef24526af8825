"""Test 4: the router outlives its API server, and catches up with what it missed.

The router's API server is stopped. Meanwhile the router serves from its last known
workers, and the cluster changes through a second API server over the same etcd (an HA
pair's other half), which the router does not know. When the first API server is back
on its port, the router's view must become what the cluster now says.
"""

from __future__ import annotations

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

# The router backs off while its API server is away (doubling, capped at 30 s), so after
# the restart it may take one backoff period to come back.
CATCH_UP_SECONDS = 45.0


@pytest.mark.usefixtures("release")
def test_router_serves_through_an_apiserver_restart_and_sees_what_changed(
    control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    loopback_workers: list[LoopbackWorker],
    tmp_path: Path,
) -> None:
    w0, w1, w2 = loopback_workers
    api = client.DiscoveryV1Api(admin)
    for worker in (w0, w1):
        api.create_namespaced_endpoint_slice(namespace, loopback_slice(namespace, worker))
    kubeconfig = router_kubeconfig(control_plane, namespace, tmp_path)
    router = RouterProcess(tmp_path, kubeconfig, namespace).start()
    try:
        router.wait_for_workers({w0.name, w1.name}, 10, "w0 and w1 to be discovered")
        router.wait_ready()

        control_plane.stop_apiserver()
        # Down: the router keeps its workers and serves jobs with them.
        assert answers(router.url + "/readyz")
        before = [w.images_made() for w in loopback_workers]
        for _ in range(2):
            assert router.generate().status_code == 200
        after = [w.images_made() for w in loopback_workers]
        assert after[2] == before[2] and sum(after) == sum(before) + 2

        # The cluster changes where the router cannot see: w0 goes, w2 comes.
        with control_plane.second_apiserver() as twin_kubeconfig:
            with control_plane.api_client(twin_kubeconfig) as twin:
                twin_api = client.DiscoveryV1Api(twin)
                twin_api.delete_namespaced_endpoint_slice(slice_name(w0), namespace)
                twin_api.create_namespaced_endpoint_slice(namespace, loopback_slice(namespace, w2))
            assert router.workers() == {w0.name, w1.name}

        control_plane.start_apiserver()
        router.wait_for_workers({w1.name, w2.name}, CATCH_UP_SECONDS, "the router to catch up")
        router.wait_ready()
        before = [w.images_made() for w in loopback_workers]
        for _ in range(2):
            assert router.generate().status_code == 200
        after = [w.images_made() for w in loopback_workers]
        assert after[0] == before[0] and sum(after) == sum(before) + 2
    finally:
        router.stop()
        control_plane.start_apiserver()
