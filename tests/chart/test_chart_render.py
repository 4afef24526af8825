"""Lint the chart and validate every rendered object against Kubernetes' own schemas."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
from chart_helpers import VALUE_SETS, Objects
from render_k8s_base import CHART_DIR, NAMESPACE, render

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest with schemas.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())

# Custom resources have no schema in kubernetes-validate; test_crds checks them by hand.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
STANDARD_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
}
SETS = list(VALUE_SETS)


@pytest.mark.parametrize("set_name", SETS)
def test_lint_is_clean(set_name: str) -> None:
    report = helm_python.lint(CHART_DIR, VALUE_SETS[set_name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("set_name", SETS)
def test_every_object_validates(rendered_sets: dict[str, Objects], set_name: str) -> None:
    objs = rendered_sets[set_name]
    assert objs
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} on {version}: {path}: {error}"
                )


@pytest.mark.parametrize("set_name", SETS)
def test_names_labels_and_namespace(rendered_sets: dict[str, Objects], set_name: str) -> None:
    for obj in rendered_sets[set_name]:
        meta = obj["metadata"]
        assert DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
        assert meta["namespace"] == NAMESPACE
        assert set(meta["labels"]) >= STANDARD_LABELS, meta["name"]


def test_expected_objects_per_set(rendered_sets: dict[str, Objects]) -> None:
    def kinds(objs: Objects) -> set[str]:
        return {o["kind"] for o in objs}

    always = {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "Pod",
    }
    assert kinds(rendered_sets["default"]) == always | {
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    }
    assert kinds(rendered_sets["gpu-cluster"]) == always | {
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "Ingress",
        "ServiceMonitor",
        "ScaledObject",
    }
    assert kinds(rendered_sets["cpu-dev"]) == always


def test_fullname_is_cut_at_63_characters(render_objects: Any) -> None:
    long_release = "r" * 53  # Helm's longest release name
    objs = render_objects({}, name=long_release)
    for obj in objs:
        assert len(obj["metadata"]["name"]) <= 63
    names = {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"}
    assert len(names) == 2 and all(n.endswith(("-router", "-worker")) for n in names)


def test_overrides_name_objects(render_objects: Any) -> None:
    objs = render_objects({"fullnameOverride": "img"})
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"} == {
        "img-router",
        "img-worker",
    }
    objs = render_objects({"nameOverride": "qi"})
    assert "qwen-image-qi-worker" in {o["metadata"]["name"] for o in objs}


def test_custom_resources_have_their_key_fields(render_objects: Any) -> None:
    objs = render_objects(
        VALUE_SETS["gpu-cluster"]
        | {"httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}], "hostnames": ["a.b"]}}
    )
    custom = {(o["apiVersion"], o["kind"]) for o in objs} & CUSTOM_KINDS
    assert custom == CUSTOM_KINDS

    # One monitor per Service, each on the port that serves its /metrics and selecting
    # that Service alone: neither the router's API port nor the workers' job port is scraped.
    monitors = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceMonitor"}
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    assert set(monitors) == set(services) == {"qwen-image-router", "qwen-image-worker"}
    for name, port in [("qwen-image-router", "metrics"), ("qwen-image-worker", "metrics")]:
        monitor = monitors[name]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert monitor["spec"]["endpoints"] == [
            {"port": port, "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
        ]
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            service
            for service in services.values()
            if selector.items() <= service["metadata"]["labels"].items()
        ]
        assert [s["metadata"]["name"] for s in selected] == [name]
        assert port in [p["name"] for p in selected[0]["spec"]["ports"]]

    route = next(o for o in objs if o["kind"] == "HTTPRoute")
    rule = route["spec"]["rules"][0]
    assert route["spec"]["parentRefs"] == [{"name": "public"}]
    assert rule["backendRefs"] == [{"name": "qwen-image-router", "port": 80}]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]


def notes(values: dict[str, Any]) -> str:
    return render(values)["qwen-image/templates/NOTES.txt"]


def test_notes_tell_what_needs_doing() -> None:
    default = notes({})
    assert "kubectl -n qwen-image port-forward svc/qwen-image-router 6002:80" in default
    assert "WARNING: no API keys are set" in default
    assert "WARNING: no model source is set" in default
    assert "ReadWriteMany" not in default

    gpu = notes(VALUE_SETS["gpu-cluster"])
    assert "curl https://qwen-image.example.com/v1/models" in gpu
    assert "Authorization: Bearer $API_KEY" in gpu
    assert "WARNING" not in gpu
    assert "qwen-image-images must be ReadWriteMany" in gpu

    existing = notes(
        {"router": {"replicaCount": 3}, "imageStorage": {"persistence": {"existingClaim": "x"}}}
    )
    assert "x must be ReadWriteMany (it is an existing claim" in existing

    cpu = notes(VALUE_SETS["cpu-dev"])
    assert "worker.gpu.enabled is false" in cpu and "no model source" not in cpu
