"""Test 2: the router runs as the chart's ServiceAccount and may do no more than discover.

The token comes from the TokenRequest API, as the kubelet gets it for the router pod; the
router process discovers a worker with it, and the same token, used through the Kubernetes
client, is refused everything the chart's Role does not grant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from k8s_helpers import (
    ROUTER_SERVICE_ACCOUNT,
    LoopbackWorker,
    RouterProcess,
    loopback_slice,
    router_kubeconfig,
)
from kubernetes import client, watch

from support.control_plane import ControlPlane

pytestmark = pytest.mark.k8s


def _status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except client.ApiException as error:
        return int(error.status)
    return 200


@pytest.mark.usefixtures("release")
def test_router_discovers_with_its_service_account_and_nothing_more(
    control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    loopback_workers: list[LoopbackWorker],
    tmp_path: Path,
) -> None:
    other = f"{namespace}-other"
    client.CoreV1Api(admin).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=other))
    )
    worker = loopback_workers[0]
    helm_secrets = client.CoreV1Api(admin).list_namespaced_secret(
        namespace, label_selector="owner=helm"
    )
    (release_secret,) = [s["metadata"]["name"] for s in helm_secrets.to_dict()["items"]]
    kubeconfig = router_kubeconfig(control_plane, namespace, tmp_path)

    with control_plane.api_client(kubeconfig) as as_router:
        core, slices = client.CoreV1Api(as_router), client.DiscoveryV1Api(as_router)
        review = client.AuthenticationV1Api(as_router).create_self_subject_review(
            client.V1SelfSubjectReview(
                api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"
            )
        )
        assert review.to_dict()["status"]["user_info"]["username"] == (
            f"system:serviceaccount:{namespace}:{ROUTER_SERVICE_ACCOUNT}"
        )
        # What discovery needs: list and watch EndpointSlices in its own namespace.
        assert slices.list_namespaced_endpoint_slice(namespace).items == []
        events = watch.Watch().stream(
            slices.list_namespaced_endpoint_slice, namespace, timeout_seconds=1
        )
        assert list(events) == []

        refused = {
            "read the release's Secret": lambda: core.read_namespaced_secret(
                release_secret, namespace
            ),
            "list Secrets": lambda: core.list_namespaced_secret(namespace),
            "list Pods in another namespace": lambda: core.list_namespaced_pod(other),
            "list Pods in its own namespace": lambda: core.list_namespaced_pod(namespace),
            "list EndpointSlices in another namespace": (
                lambda: slices.list_namespaced_endpoint_slice(other)
            ),
            "list EndpointSlices in every namespace": (
                lambda: slices.list_endpoint_slice_for_all_namespaces()
            ),
            "create an EndpointSlice": lambda: slices.create_namespaced_endpoint_slice(
                namespace, loopback_slice(namespace, worker)
            ),
            "list ConfigMaps": lambda: core.list_namespaced_config_map(namespace),
        }
        assert {what: _status_of(call) for what, call in refused.items()} == dict.fromkeys(
            refused, 403
        )

    router = RouterProcess(tmp_path, kubeconfig, namespace).start()
    try:
        client.DiscoveryV1Api(admin).create_namespaced_endpoint_slice(
            namespace, loopback_slice(namespace, worker)
        )
        router.wait_for_workers({worker.name}, 10, "the router to discover the worker")
        made = worker.images_made()
        answer = router.generate()
        assert answer.status_code == 200, answer.text
        assert worker.images_made() == made + 1
        assert "Forbidden" not in router.service.log()
    finally:
        router.stop()
