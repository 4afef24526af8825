"""values.schema.json, applied by the real Helm engine, refuses values that cannot work."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from chart_helpers import VALUE_SETS
from render_k8s_base import CHART_DIR, render

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "negative router replicas": ({"router": {"replicaCount": -1}}, "/router/replicaCount"),
    "negative worker replicas": ({"worker": {"replicaCount": -2}}, "/worker/replicaCount"),
    "replicas as a string": ({"worker": {"replicaCount": "3"}}, "/worker/replicaCount"),
    "timeout as a string": ({"taskTimeoutSeconds": "600"}, "/taskTimeoutSeconds"),
    "zero timeout": ({"taskTimeoutSeconds": 0}, "/taskTimeoutSeconds"),
    "fractional queue size": ({"taskQueueSize": 1.5}, "/taskQueueSize"),
    "unknown access mode": (
        {"imageStorage": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}},
        "/imageStorage/persistence/accessModes/0",
    ),
    "no access mode": ({"imageStorage": {"persistence": {"accessModes": []}}}, "accessModes"),
    "bad size": (
        {"imageStorage": {"persistence": {"size": "lots"}}},
        "/imageStorage/persistence/size",
    ),
    "unknown top-level key": ({"replicaCount": 2}, "replicaCount"),
    "typo in a role block": ({"worker": {"nodeselector": {}}}, "nodeselector"),
    "snake_case key": ({"router": {"replica_count": 2}}, "replica_count"),
    "bad pull policy": (
        {"router": {"image": {"pullPolicy": "Sometimes"}}},
        "/router/image/pullPolicy",
    ),
    "bad digest": ({"worker": {"image": {"digest": "latest"}}}, "/worker/image/digest"),
    "gpu count zero": ({"worker": {"gpu": {"count": 0}}}, "/worker/gpu/count"),
    "gpu switch as a string": ({"worker": {"gpu": {"enabled": "no"}}}, "/worker/gpu/enabled"),
    "bad log format": ({"logFormat": "xml"}, "/logFormat"),
    "relative image dir": (
        {"imageStorage": {"mountPath": "data/images"}},
        "/imageStorage/mountPath",
    ),
    "probe path without slash": (
        {"worker": {"startupProbe": {"httpGet": {"path": "readyz", "port": "http"}}}},
        "/worker/startupProbe/httpGet/path",
    ),
    "negative drain timeout": (
        {"worker": {"drainTimeoutSeconds": -5}},
        "/worker/drainTimeoutSeconds",
    ),
    "service port out of range": ({"router": {"service": {"port": 70000}}}, "/router/service/port"),
    "api key with a comma": ({"apiKeys": {"keys": ["a,b"]}}, "/apiKeys/keys/0"),
    "api keys as a string": ({"apiKeys": {"keys": "k1,k2"}}, "/apiKeys/keys"),
    "bad ingress path type": ({"ingress": {"pathType": "Glob"}}, "/ingress/pathType"),
    "ingress without hosts": ({"ingress": {"enabled": True, "hosts": []}}, "hosts"),
    "http route without gateway": ({"httpRoute": {"enabled": True}}, "parentRefs"),
    "bad scrape interval": ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    "keda without prometheus url": (
        {"worker": {"autoscaling": {"prometheusServerAddress": "prometheus:9090"}}},
        "/worker/autoscaling/prometheusServerAddress",
    ),
    "toleration with a bad effect": (
        {"worker": {"tolerations": [{"key": "x", "operator": "Exists", "effect": "Never"}]}},
        "/worker/tolerations/0/effect",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_render_refuses_bad_values(case: str) -> None:
    values, where = BAD_VALUES[case]
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(values)
    assert where in str(caught.value)


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_shipped_values_pass_the_schema(set_name: str) -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(VALUE_SETS[set_name])


def test_read_write_many_is_documented_in_schema() -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
    assert schema is not None
    persistence = schema["properties"]["imageStorage"]["properties"]["persistence"]["properties"]
    assert "ReadWriteMany" in persistence["accessModes"]["description"]
    assert "ReadWriteMany" in persistence["existingClaim"]["description"]
    assert (
        "ReadWriteMany"
        in schema["properties"]["router"]["properties"]["replicaCount"]["description"]
    )


# Values that are Kubernetes objects (or maps) passed through whole; documented as one @param.
FREE_FORM = re.compile(
    r"(resources|updateStrategy|[a-z]*Probe|podSecurityContext|securityContext|"
    r"metricsNamespaceSelector|metricsPodSelector|annotations|labels|nodeSelector|affinity)$"
)


def leaf_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the values: maps are walked unless they are passed through whole."""
    paths: set[str] = set()
    for key, item in tree.items():
        path = f"{prefix}{key}"
        if isinstance(item, dict) and item and not FREE_FORM.search(path):
            paths |= leaf_paths(item, path + ".")
        else:
            paths.add(path)
    return paths


def test_every_value_is_documented_and_camel_case() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.MULTILINE))
    values = yaml.safe_load(text)
    leaves = leaf_paths(values)
    assert leaves - documented == set(), "values without an @param line"
    assert documented - leaves == set(), "@param lines for values that do not exist"
    for path in leaves:
        for key in path.split("."):
            assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"{path} is not camelCase"
    assert re.findall(r"^## @section ", text, flags=re.MULTILINE)


def test_schema_covers_every_value() -> None:
    """additionalProperties is false, so a value missing from the schema is refused."""
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    with helm_python.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)


def test_examples_use_only_known_values() -> None:
    for path in Path(CHART_DIR / "examples").glob("*.yaml"):
        with helm_python.Chart.load(CHART_DIR) as chart:
            chart.validate_schema(yaml.safe_load(path.read_text()))
