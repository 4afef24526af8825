"""Test 1: `helm install` of charts/qwen-image into a real API server accepts every object.

Rendering alone cannot tell whether kube-apiserver takes the objects: its validation and
admission (and, for ServiceMonitor, ScaledObject and HTTPRoute, the upstream CRDs' schemas)
can. Each object is first sent as a strict server-side dry run, where an unknown or
duplicated field is an error instead of being dropped; then Helm installs the release.
"""

from __future__ import annotations

import copy
import ssl
from typing import Any

import httpx
import pytest
from k8s_helpers import helm_install, helm_uninstall, load_example, render_chart
from kubernetes import client, dynamic

from support.control_plane import ControlPlane, load_manifests

pytestmark = pytest.mark.k8s


def _everything() -> dict[str, Any]:
    """The GPU-cluster values plus every optional object the chart can render."""
    values = copy.deepcopy(load_example("gpu-cluster"))
    values["httpRoute"] = {
        "enabled": True,
        "parentRefs": [{"name": "public", "namespace": "gateway"}],
        "hostnames": ["qwen-image.example.com"],
    }
    values["promptRewrite"] = {
        "enabled": True,
        "baseUrl": "http://llm.example.com/v1",
        "model": "qwen-plus",
        "apiKey": "sk-test",
    }
    return values


def _two_pools() -> dict[str, Any]:
    """The GPU-cluster values with a second pool, the editor, without KEDA or a PDB."""
    values = copy.deepcopy(load_example("gpu-cluster"))
    values["workerPools"] = {
        "edit": {
            "modelName": "Qwen-Image-Edit-2509",
            "model": {"path": "/models/Qwen-Image-Edit-2509"},
            "autoscaling": {"enabled": False},
            "pdb": {"enabled": False},
        }
    }
    return values


VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cpu-dev": load_example("cpu-dev"),
    "gpu-cluster": load_example("gpu-cluster"),
    "gpu-cluster-with-every-option": _everything(),
    "gpu-cluster-two-pools": _two_pools(),
}
# Kinds each value set must produce: proof that the optional objects were really installed.
_BASE_KINDS = {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding",
               "PersistentVolumeClaim", "PodDisruptionBudget", "NetworkPolicy"}  # fmt: skip
_GPU_KINDS = _BASE_KINDS | {"HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "Ingress"}
EXPECTED_KINDS = {
    "default": _BASE_KINDS,
    "cpu-dev": _BASE_KINDS - {"PersistentVolumeClaim", "PodDisruptionBudget"},
    "gpu-cluster": _GPU_KINDS,
    "gpu-cluster-with-every-option": _GPU_KINDS | {"HTTPRoute", "Secret"},
    "gpu-cluster-two-pools": _GPU_KINDS,
}


@pytest.fixture(scope="module")
def upstream_crds(control_plane: ControlPlane) -> list[str]:
    """ServiceMonitor, ScaledObject and HTTPRoute CRDs from their upstream releases."""
    control_plane.start_apiserver()
    return control_plane.install_crds(control_plane.upstream_crds())


@pytest.fixture
def resources(admin: client.ApiClient) -> dynamic.DynamicClient:
    return dynamic.DynamicClient(admin)


def _strict_dry_run(
    plane: ControlPlane, resources: dynamic.DynamicClient, obj: dict[str, Any], namespace: str
) -> httpx.Response:
    """POST the object with dryRun=All and fieldValidation=Strict; nothing is stored."""
    resource = resources.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    path = resource.path(namespace=namespace) if resource.namespaced else resource.path()
    tls = ssl.create_default_context(cafile=str(plane.ca_file))
    tls.load_cert_chain(str(plane.admin_pair.cert), str(plane.admin_pair.key))
    return httpx.post(
        plane.server + path,
        params={"dryRun": "All", "fieldValidation": "Strict"},
        json=obj,
        verify=tls,
        timeout=30,
    )


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _stored(resources: dynamic.DynamicClient, obj: dict[str, Any], namespace: str) -> bool:
    resource = resources.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    try:
        resource.get(name=obj["metadata"]["name"], namespace=namespace)
    except dynamic.exceptions.NotFoundError:
        return False
    return True


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_helm_install_is_accepted_by_the_api_server(
    control_plane: ControlPlane,
    resources: dynamic.DynamicClient,
    namespace: str,
    upstream_crds: list[str],
    value_set: str,
) -> None:
    values = VALUE_SETS[value_set]
    objects = render_chart(values, namespace)
    kinds = {obj["kind"] for obj in objects}
    expected = EXPECTED_KINDS[value_set]
    assert expected <= kinds, f"the {value_set} rendering lacks {sorted(expected - kinds)}"

    refused, warned = {}, {}
    for obj in objects:
        answer = _strict_dry_run(control_plane, resources, obj, namespace)
        key = _key(obj)
        if answer.status_code != 201:
            refused[key] = answer.json().get("message", answer.text)
        if answer.headers.get_list("warning"):
            warned[key] = answer.headers.get_list("warning")
    assert refused == {}
    assert warned == {}

    release = helm_install(control_plane, namespace, values)
    assert release["status"] == "deployed"
    installed = load_manifests(release["manifest"])
    assert sorted(_key(o) for o in installed) == sorted(_key(o) for o in objects)
    missing = [_key(obj) for obj in objects if not _stored(resources, obj, namespace)]
    assert missing == []

    # Uninstalling removes everything but what the chart marks to keep (stored images).
    kept = [
        _key(obj)
        for obj in objects
        if (obj["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"
    ]
    helm_uninstall(control_plane, namespace)
    left = [_key(obj) for obj in objects if _stored(resources, obj, namespace)]
    assert left == kept
