"""What the k8s tests share: the chart installed with Helm, the router as a process and its
view of the workers, demo-model workers on loopback addresses and EndpointSlices for them.
"""

from __future__ import annotations

import functools
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import httpx
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from support.control_plane import REPO_ROOT, ControlPlane
from support.processes import Service, answers, free_port, wait_until

CHART_DIR = REPO_ROOT / "charts" / "qwen-image"
EXAMPLES_DIR = CHART_DIR / "examples"
# With release name "qwen-image" the chart's objects are qwen-image-router/-worker.
RELEASE = "qwen-image"
ROUTER_SERVICE_ACCOUNT = "qwen-image-router"
WORKER_SERVICE = "qwen-image-worker"
WORKER_DEPLOYMENT = "qwen-image-worker"
_WORKER_SERIES = "qwen_image_router_worker_in_flight"


def load_example(name: str) -> dict[str, Any]:
    """One of the chart's documented value files, e.g. `gpu-cluster`."""
    values: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / f"{name}.yaml").read_text())
    return values


def render_chart(values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The chart's objects (hooks and NOTES left out) as Helm renders them for `namespace`."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace)
    objects: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") or "/templates/tests/" in path:
            continue
        objects.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return objects


def helm_install(plane: ControlPlane, namespace: str, values: dict[str, Any]) -> dict[str, Any]:
    """`helm install qwen-image charts/qwen-image -n <namespace>` with the real Helm engine."""
    with (
        helm_python.Config(kubeconfig_path=plane.admin_kubeconfig, namespace=namespace) as helm,
        helm_python.Chart.load(CHART_DIR) as chart,
    ):
        return helm.install(chart, RELEASE, values, namespace=namespace, timeout=120)


def helm_uninstall(plane: ControlPlane, namespace: str) -> None:
    with helm_python.Config(kubeconfig_path=plane.admin_kubeconfig, namespace=namespace) as helm:
        helm.uninstall(RELEASE, ignore_not_found=True, timeout=120)


def router_kubeconfig(plane: ControlPlane, namespace: str, directory: Path) -> Path:
    """A kubeconfig holding a TokenRequest token of the chart's router ServiceAccount."""
    token = plane.service_account_token(namespace, ROUTER_SERVICE_ACCOUNT)
    return plane.kubeconfig(directory / f"router-{namespace}.kubeconfig", token=token)


# ----- workers on loopback addresses ----------------------------------------------------


@dataclass
class LoopbackWorker:
    """A real demo-model worker process listening on host:port (host in 127.0.0.0/8)."""

    name: str
    host: str
    port: int
    service: Service

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def images_made(self) -> int:
        """Images this worker generated so far, from its own /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            if family.name == "qwen_image_worker_images_generated":
                return int(sum(s.value for s in family.samples if s.name.endswith("_total")))
        return 0


def _free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_loopback_workers(
    directory: Path, hosts: list[str], prefix: str = "worker", **env: str
) -> list[LoopbackWorker]:
    """Start one worker per host (all at once: each loads the model), return them ready;
    `env` picks another model (MODEL_PATH, MODEL_NAME)."""
    workers = []
    for index, host in enumerate(hosts):
        port = _free_port_on(host)
        name = f"{prefix}-{index}"
        service = Service(
            ["worker"],
            {"HOST": host, "PORT": str(port), "DEVICE": "cpu", "TASK_QUEUE_SIZE": "2", **env},
            directory / f"{name}.log",
        ).start()
        workers.append(LoopbackWorker(name, host, port, service))
    try:
        for worker in workers:
            ready = functools.partial(answers, worker.url + "/readyz")
            wait_until(ready, 120, f"{worker.name} ready")
    except AssertionError:
        logs = "\n".join(f"--- {w.name}\n{w.service.log()[-3000:]}" for w in workers)
        for worker in workers:
            worker.service.stop()
        raise AssertionError(f"the loopback workers did not become ready:\n{logs}") from None
    return workers


def loopback_slice(
    namespace: str, worker: LoopbackWorker, *, ready: bool = True, service: str = WORKER_SERVICE
) -> client.V1EndpointSlice:
    """An EndpointSlice of the worker Service (or of another pool's `service`) that points at
    `worker`, as a controller writes.

    kube-apiserver refuses loopback IPs in IPv4 and IPv6 slices (ValidateEndpointIP), so the
    slice has addressType FQDN, whose addresses are names: the worker's numeric address is
    one, and resolves to itself. The router reads addresses the same way for every type.
    """
    return client.V1EndpointSlice(
        api_version="discovery.k8s.io/v1",
        kind="EndpointSlice",
        metadata=client.V1ObjectMeta(
            name=slice_name(worker, service),
            namespace=namespace,
            labels={
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "qwen-image-tests",
            },
        ),
        address_type="FQDN",
        endpoints=[
            client.V1Endpoint(
                addresses=[worker.host],
                conditions=client.V1EndpointConditions(
                    ready=ready, serving=ready, terminating=False
                ),
                target_ref=client.V1ObjectReference(
                    kind="Pod", namespace=namespace, name=worker.name
                ),
            )
        ],
        ports=[client.DiscoveryV1EndpointPort(name="http", port=worker.port, protocol="TCP")],
    )


def slice_name(worker: LoopbackWorker, service: str = WORKER_SERVICE) -> str:
    return f"{service}-{worker.name}"


# ----- the router as a process ------------------------------------------------------------


class RouterProcess:
    """`python -m qwen_image_router` with Kubernetes discovery."""

    def __init__(self, directory: Path, kubeconfig: Path, namespace: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.namespace = namespace
        self.service = Service(
            ["router"],
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "DISCOVERY": "kubernetes",
                "KUBECONFIG": str(kubeconfig),
                "WORKER_SERVICE_NAME": WORKER_SERVICE,
                "WORKER_NAMESPACE": namespace,
                "WORKER_PORT_NAME": "http",
                "IMAGE_OUTPUT_DIR": str(directory / "images"),
                "LOG_FORMAT": "text",
                **env,
            },
            directory / f"router-{self.port}.log",
        )

    def start(self) -> RouterProcess:
        self.service.start()
        try:
            wait_until(lambda: answers(self.url + "/healthz"), 60, "the router to serve")
        except AssertionError:
            self.service.stop()
            raise AssertionError(f"the router did not start:\n{self.service.log()}") from None
        return self

    def stop(self) -> None:
        self.service.stop()

    def workers(self) -> set[str]:
        """The workers in the router's registry, by name, as its /metrics lists them."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return {
            sample.labels["worker"]
            for family in text_string_to_metric_families(text)
            if family.name == _WORKER_SERIES
            for sample in family.samples
        }

    def wait_for_workers(
        self, expected: set[str], timeout: float, what: str, *, since: float | None = None
    ) -> None:
        """Wait until the router's registry holds exactly `expected`.

        With `since` (a time.monotonic() taken before the API change) the timeout counts
        from then, so the bound covers the API write too.
        """
        if since is not None:
            timeout -= time.monotonic() - since
        try:
            wait_until(lambda: self.workers() == expected, timeout, what, interval=0.02)
        except AssertionError as error:
            raise AssertionError(
                f"{error}: the router has {sorted(self.workers())}, expected {sorted(expected)}; "
                f"its log ends:\n{self.log_tail()}"
            ) from None

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until a worker's fresh load report says ready (the load poller ran)."""
        wait_until(lambda: answers(self.url + "/readyz"), timeout, "the router to be ready")

    def generate(self) -> httpx.Response:
        body = {"prompt": "a tram", "size": "256x256", "num_inference_steps": 2}
        return httpx.post(self.url + "/v1/images/generations", json=body, timeout=120)

    def ready_counts_logged(self) -> list[int]:
        """How many ready workers each change discovery handed over had, in order, as the
        router logged them."""
        pattern = re.compile(
            rf"Ready workers of {re.escape(self.namespace)}/{re.escape(WORKER_SERVICE)}: (\d+)"
        )
        return [
            int(match.group(1))
            for line in self.service.log().splitlines()
            if (match := pattern.search(line))
        ]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.service.log().splitlines()[-lines:])
