"""Test 5: the chart on a simulated GPU cluster, with the router watching it.

kube-controller-manager and kube-scheduler do their real jobs; kwok plays the kubelets of
two GPU nodes (4 x nvidia.com/gpu each, tainted like GPU nodes) and one CPU node, and
marks pods Running and Ready. No process runs behind a simulated pod, so these tests
check the router's view of the workers (its registry, as /metrics lists it), never jobs.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from k8s_helpers import (
    WORKER_DEPLOYMENT,
    RouterProcess,
    helm_install,
    router_kubeconfig,
)
from kubernetes import client

from support.control_plane import GPU_RESOURCE, ControlPlane
from support.processes import wait_until

pytestmark = pytest.mark.k8s

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_NODES = ("gpu-node-0", "gpu-node-1")
GPUS_PER_NODE = 4
SETTLE_SECONDS = 60.0  # controllers, scheduler and kwok on 2 shared cores


@dataclass
class Deployed:
    namespace: str
    core: client.CoreV1Api
    apps: client.AppsV1Api
    router: RouterProcess

    def pods(self, component: str = "worker") -> list[dict[str, Any]]:
        listed = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"app.kubernetes.io/component={component}"
        )
        items: list[dict[str, Any]] = listed.to_dict()["items"]
        return items

    def ready_workers(self) -> set[str]:
        """Worker pods Running and Ready and not being deleted, as the API says."""
        return {
            pod["metadata"]["name"]
            for pod in self.pods()
            if pod["metadata"]["deletion_timestamp"] is None
            and pod["status"]["phase"] == "Running"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod["status"]["conditions"] or ()
            )
        }

    def scale(self, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(
            WORKER_DEPLOYMENT, self.namespace, {"spec": {"replicas": replicas}}
        )

    def settle(self, replicas: int) -> set[str]:
        """Wait until `replicas` workers are ready and the router holds exactly those."""
        wait_until(
            lambda: (
                len(ready := self.ready_workers()) == replicas and self.router.workers() == ready
            ),
            SETTLE_SECONDS,
            f"{replicas} ready workers in the API and in the router",
            interval=0.1,
        )
        return self.ready_workers()


@pytest.fixture(scope="module")
def deployed(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    """The chart installed on the simulated cluster, and the router process watching it."""
    control_plane.start_apiserver()
    control_plane.start_controllers()
    tmp_path: Path = tmp_path_factory.mktemp("simulated-cluster")
    router = None
    try:
        labels = {"nvidia.com/gpu.product": GPU_PRODUCT}
        for name in GPU_NODES:
            control_plane.add_kwok_node(name, gpus=GPUS_PER_NODE, labels=labels)
        control_plane.add_kwok_node("cpu-node-0")
        namespace = "simulated-cluster"
        with control_plane.api_client() as admin:
            core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
            values = {
                "imageStorage": {"persistence": {"enabled": False}},
                "worker": {"replicaCount": 2, "nodeSelector": labels},
            }
            helm_install(control_plane, namespace, values)
            kubeconfig = router_kubeconfig(control_plane, namespace, tmp_path)
            router = RouterProcess(tmp_path, kubeconfig, namespace).start()
            yield Deployed(namespace, core, apps, router)
    finally:
        if router is not None:
            router.stop()
        control_plane.stop_controllers()


def test_install_runs_worker_pods_on_simulated_gpu_nodes(deployed: Deployed) -> None:
    names = deployed.settle(2)
    workers = [pod for pod in deployed.pods() if pod["metadata"]["name"] in names]
    assert {pod["spec"]["node_name"] for pod in workers} <= set(GPU_NODES)
    for pod in workers:
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"][GPU_RESOURCE] == "1"

    # The router pod runs too, on the CPU node: the GPU nodes' taint keeps it off them.
    def running_routers() -> set[str]:
        return {
            pod["spec"]["node_name"]
            for pod in deployed.pods("router")
            if pod["status"]["phase"] == "Running"
        }

    wait_until(lambda: bool(running_routers()), SETTLE_SECONDS, "the router pod to run")
    assert running_routers() == {"cpu-node-0"}


def test_router_follows_the_worker_deployment_scaling(deployed: Deployed) -> None:
    two = deployed.settle(2)
    deployed.scale(5)
    five = deployed.settle(5)
    assert two < five
    deployed.scale(1)
    one = deployed.settle(1)
    assert one < five
    # 8 GPUs, one per worker: a ninth worker cannot be placed, and the router never sees it.
    deployed.scale(9)
    wait_until(lambda: len(deployed.ready_workers()) == 8, SETTLE_SECONDS, "8 workers on 8 GPUs")
    pending = [
        pod["metadata"]["name"] for pod in deployed.pods() if pod["status"]["phase"] == "Pending"
    ]
    assert len(pending) == 1
    assert pending[0] not in deployed.router.workers()
    deployed.scale(2)
    deployed.settle(2)


def test_rolling_update_never_leaves_the_router_without_a_worker(deployed: Deployed) -> None:
    deployed.scale(3)
    old = deployed.settle(3)
    logged_before = len(deployed.router.ready_counts_logged())
    restarted_at = datetime.datetime.now(datetime.UTC).isoformat()
    deployed.apps.patch_namespaced_deployment(
        WORKER_DEPLOYMENT,
        deployed.namespace,
        {
            "spec": {
                "template": {"metadata": {"annotations": {"qwen-image/restarted-at": restarted_at}}}
            }
        },
    )
    views: list[set[str]] = []
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        views.append(deployed.router.workers())
        ready = deployed.ready_workers()
        if len(ready) == 3 and not ready & old and views[-1] == ready:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the rollout did not finish; the router saw {views[-5:]}")
    assert all(views), "the router had no worker during the rollout"
    logged = deployed.router.ready_counts_logged()[logged_before:]
    assert 0 not in logged
    # maxSurge 0, maxUnavailable 1: the pods were replaced one by one, each step seen.
    assert len(logged) >= 3, logged
