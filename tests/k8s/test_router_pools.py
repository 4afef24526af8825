"""Two worker pools discovered through a real API server: the chart's two-pool release
names both pools' Services to the router, their EndpointSlices point at a demo generator and
a demo editor on loopback, and each request goes to the pool of the model it names."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from k8s_helpers import (
    LoopbackWorker,
    RouterProcess,
    helm_install,
    helm_uninstall,
    loopback_slice,
    render_chart,
    router_kubeconfig,
    start_loopback_workers,
)
from kubernetes import client
from PIL import Image

from support.control_plane import ControlPlane
from support.processes import wait_until

pytestmark = pytest.mark.k8s

EDITOR = "Qwen-Image-Edit-2509"
TWO_POOLS = {"workerPools": {"edit": {"modelName": EDITOR, "model": {"path": "demo-edit"}}}}


@pytest.fixture(scope="module")
def loopback_editor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackWorker]:
    """A demo editor on 127.0.0.5, beside the session's demo generators."""
    (editor,) = start_loopback_workers(
        tmp_path_factory.mktemp("editor"),
        ["127.0.0.5"],
        prefix="editor",
        MODEL_PATH="demo-edit",
        MODEL_NAME=EDITOR,
        WARMUP_SIZE_PIXELS="64",
    )
    yield editor
    editor.service.stop()


@pytest.fixture
def two_pool_release(control_plane: ControlPlane, namespace: str) -> Iterator[list[str]]:
    """The chart installed with a second pool, the editor; yields the Services the router
    Deployment tells discovery to watch (the generator's, then the editor's)."""
    helm_install(control_plane, namespace, TWO_POOLS)
    (router,) = [
        obj
        for obj in render_chart(TWO_POOLS, namespace)
        if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("-router")
    ]
    env: list[dict[str, Any]] = router["spec"]["template"]["spec"]["containers"][0]["env"]
    (services,) = [var["value"] for var in env if var["name"] == "WORKER_SERVICE_NAME"]
    yield services.split(",")
    control_plane.start_apiserver()
    helm_uninstall(control_plane, namespace)


def png_file() -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    return ("picture.png", buffer.getvalue(), "image/png")


def test_router_serves_each_model_from_its_own_pool(
    control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    two_pool_release: list[str],
    loopback_workers: list[LoopbackWorker],
    loopback_editor: LoopbackWorker,
    tmp_path: Path,
) -> None:
    generators, editors = two_pool_release
    generator = loopback_workers[0]
    api = client.DiscoveryV1Api(admin)
    api.create_namespaced_endpoint_slice(
        namespace, loopback_slice(namespace, generator, service=generators)
    )
    api.create_namespaced_endpoint_slice(
        namespace, loopback_slice(namespace, loopback_editor, service=editors)
    )
    kubeconfig = router_kubeconfig(control_plane, namespace, tmp_path)
    router = RouterProcess(
        tmp_path, kubeconfig, namespace, WORKER_SERVICE_NAME=",".join(two_pool_release)
    ).start()
    try:
        router.wait_for_workers({generator.name, loopback_editor.name}, 10, "both pools")
        with openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0) as sdk:

            def models() -> list[str]:
                return sorted(model.id for model in sdk.models.list())

            # The editor's model is learned from its first load report.
            wait_until(lambda: models() == ["Qwen-Image", EDITOR], 10, "both models listed")

            def images() -> list[int]:
                return [generator.images_made(), loopback_editor.images_made()]

            before = images()
            assert router.generate().status_code == 200
            edited = sdk.images.edit(
                model=EDITOR,
                image=png_file(),
                prompt="make it blue",
                size="256x256",
                extra_body={"num_inference_steps": 2},
            )
            assert edited.data is not None and edited.data[0].b64_json
            assert [a - b for a, b in zip(images(), before, strict=True)] == [1, 1]

            with pytest.raises(openai.BadRequestError) as refused:
                sdk.images.generate(model=EDITOR, prompt="a tram", size="256x256")
            assert refused.value.body == {"detail": f"Model not available: {EDITOR}"}
    finally:
        router.stop()
