"""Both images, as `make images` built them, run the way the chart runs them.

Each container gets its Deployment's environment, user, security context (read-only root
filesystem, no capabilities, no privilege escalation) and volumes (emptyDirs as tmpfs),
rendered by Helm from `charts/qwen-image/examples/cpu-dev.yaml` with the images' `dev` tag.
What a cluster would provide differently: the host network of the test's loopback-only
namespace (HOST and ports are set to free loopback ports), and a kubeconfig for the
EndpointSlice API stub in place of in-cluster credentials. The logs of both containers are
printed when a test fails.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from PIL import Image
from render_k8s_base import REPO_ROOT, objects, render

from support.k8s_api_stub import EndpointSliceApiStub, endpoint, endpoint_slice, write_kubeconfig
from support.processes import answers, free_port, wait_until

pytestmark = pytest.mark.images

TAG = "dev"
NAMESPACE = "qwen-image"
PODMAN_ENV = os.environ | {"CONTAINERS_CONF": str(REPO_ROOT / "tools/images/containers.conf")}


def podman(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done.stdout


def deployments() -> dict[str, dict[str, Any]]:
    """The router's and the worker's pod specs, by component."""
    values = yaml.safe_load((REPO_ROOT / "charts/qwen-image/examples/cpu-dev.yaml").read_text())
    for role in ("router", "worker"):
        values[role].setdefault("image", {})["tag"] = TAG
    rendered = objects(render(values))
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o["spec"]["template"]["spec"]
        for o in rendered
        if o["kind"] == "Deployment"
    }


def run_args(pod: dict[str, Any], env: dict[str, str], mounts: dict[str, str]) -> list[str]:
    """`podman run` arguments for the pod's one container, as the kubelet would start it."""
    (container,) = pod["containers"]
    image = container["image"]
    assert podman("images", "-q", image).strip(), f"{image} is missing: build it with `make images`"
    pod_security, security = pod["securityContext"], container["securityContext"]
    args = [
        "--network=host",
        f"--user={security['runAsUser']}:{pod_security['runAsGroup']}",
        f"--group-add={pod_security['fsGroup']}",
        "--cap-drop=ALL" if security["capabilities"]["drop"] == ["ALL"] else "",
    ]
    if security["readOnlyRootFilesystem"]:
        args.append("--read-only")
    if not security["allowPrivilegeEscalation"]:
        args.append("--security-opt=no-new-privileges")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        empty_dir = volumes[mount["name"]]["emptyDir"]
        size = f",size={tmpfs_size(empty_dir['sizeLimit'])}" if "sizeLimit" in empty_dir else ""
        mode = "ro" if mount.get("readOnly") else "rw"
        # An emptyDir starts empty (no copy of the image's folder) and the pod's fsGroup may
        # write it; U gives it to the container's user, podman's nearest equivalent.
        args.append(f"--tmpfs={mount['mountPath']}:{mode},notmpcopyup,U{size}")
    for source, target in mounts.items():
        args.append(f"--volume={source}:{target}:ro")
    for item in container["env"]:
        value = item.get("value")
        if "valueFrom" in item:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            value = NAMESPACE
        args.append(f"--env={item['name']}={env.get(item['name'], value)}")
    args += [f"--env={name}={value}" for name, value in env.items()]
    return [a for a in args if a] + [image]


def loopback(pod: dict[str, Any]) -> dict[str, str]:
    """HOST and a free loopback port for each port the chart sets (PORT, METRICS_PORT)."""
    (container,) = pod["containers"]
    ports = [e["name"] for e in container["env"] if e["name"] in ("PORT", "METRICS_PORT")]
    return {"HOST": "127.0.0.1"} | {name: str(free_port()) for name in ports}


def tmpfs_size(quantity: str) -> str:
    """A Kubernetes quantity in binary units (256Mi) as tmpfs's size option (256m)."""
    number, unit = quantity[:-2], quantity[-2:]
    assert number.isdigit() and unit in ("Ki", "Mi", "Gi"), f"size {quantity} not converted"
    return number + unit[0].lower()


class Container:
    """One container started with `podman run --detach`; removed by `remove`."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        podman("run", "--detach", f"--name={name}", *args)

    def exit_code(self, timeout: float) -> int:
        return int(podman("wait", self.name, timeout=timeout).strip())

    def logs(self) -> str:
        done = subprocess.run(
            ["podman", "logs", self.name], env=PODMAN_ENV, capture_output=True, text=True
        )
        return done.stdout + done.stderr

    def remove(self) -> None:
        subprocess.run(
            ["podman", "rm", "--force", "--time=5", self.name], env=PODMAN_ENV, capture_output=True
        )


class Stack:
    def __init__(self, router: Container, worker: Container, url: str, worker_url: str) -> None:
        self.router, self.worker, self.url, self.worker_url = router, worker, url, worker_url


@pytest.fixture
def stack(api: EndpointSliceApiStub, tmp_path: Path) -> Iterator[Stack]:
    pods = deployments()
    name = f"qwen-image-test-{os.getpid()}"
    started: list[Container] = []
    kubeconfig = write_kubeconfig(api, tmp_path / "kubeconfig")
    kubeconfig.chmod(0o644)
    worker_env = loopback(pods["worker"])
    router_env = loopback(pods["router"]) | {"KUBECONFIG": "/etc/qwen-image/kubeconfig"}
    try:
        worker = Container(
            f"{name}-worker",
            run_args(pods["worker"], worker_env, {}),
        )
        started.append(worker)
        router = Container(
            f"{name}-router",
            run_args(
                pods["router"],
                router_env,
                {str(kubeconfig): "/etc/qwen-image/kubeconfig"},
            ),
        )
        started.append(router)
        worker_url = f"http://127.0.0.1:{worker_env['PORT']}"
        wait_until(lambda: answers(worker_url + "/readyz"), 180, "the worker container")
        api.apply(
            endpoint_slice(
                "qwen-image-worker",
                [endpoint("127.0.0.1", pod="worker-0", ready=True)],
                namespace=NAMESPACE,
                name="qwen-image-worker-0",
                ports=(("http", int(worker_env["PORT"])),),
            )
        )
        url = f"http://127.0.0.1:{router_env['PORT']}"
        wait_until(lambda: answers(url + "/readyz"), 60, "the router container to see the worker")
        yield Stack(router, worker, url, worker_url)
    finally:
        for container in started:
            print(f"--- logs of {container.name}\n{container.logs()}")
            container.remove()


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_images_serve_the_openai_client_through_the_router(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)
    common: dict[str, Any] = {
        "model": "Qwen-Image",
        "prompt": "a lighthouse at dusk",
        "size": "256x256",
        "extra_body": {"num_inference_steps": 2, "seed": 7},
    }
    inline = client.images.generate(**common, response_format="b64_json")
    assert inline.data and png(base64.b64decode(inline.data[0].b64_json or "")).size == (256, 256)

    by_url = client.images.generate(**common, response_format="url")
    assert by_url.data and by_url.data[0].url
    served = httpx.get(by_url.data[0].url, timeout=10)
    assert served.status_code == 200
    assert png(served.content).size == (256, 256)


def running_jobs(worker_url: str) -> float:
    for line in httpx.get(worker_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("qwen_image_worker_running_jobs "):
            return float(line.split()[-1])
    return 0.0


def test_sigterm_drains_the_worker_container(stack: Stack) -> None:
    results: list[httpx.Response] = []
    body = {"prompt": "a tram", "size": "1024x1024", "num_inference_steps": 40}
    request = threading.Thread(
        target=lambda: results.append(
            httpx.post(stack.url + "/v1/images/generations", json=body, timeout=300)
        )
    )
    request.start()
    wait_until(lambda: running_jobs(stack.worker_url) == 1, 60, "the job to start")
    podman("kill", "--signal=TERM", stack.worker.name)
    assert stack.worker.exit_code(timeout=150) == 0
    request.join(timeout=60)
    assert [r.status_code for r in results] == [200]
    assert png(base64.b64decode(results[0].json()["data"][0]["b64_json"])).size == (1024, 1024)


def test_skaffold_podman_profile_builds_with_podman() -> None:
    """skaffold.yaml's `podman` profile runs its custom build command the way skaffold does:
    from the repository root with IMAGE, BUILD_CONTEXT and PUSH_IMAGE set."""
    profile = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())["profiles"]
    (podman_profile,) = [p for p in profile if p["name"] == "podman"]
    router = podman_profile["build"]["artifacts"][0]
    image = f"localhost/{router['image']}:skaffold-{os.getpid()}"
    env = PODMAN_ENV | {"IMAGE": image, "BUILD_CONTEXT": str(REPO_ROOT), "PUSH_IMAGE": "false"}
    built = subprocess.run(
        router["custom"]["buildCommand"].split(),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        assert podman("images", "-q", image).strip()
    finally:
        subprocess.run(["podman", "rmi", image], env=PODMAN_ENV, capture_output=True)
