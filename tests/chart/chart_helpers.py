"""What the chart tests share: the value sets we ship and small lookups in rendered objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from render_k8s_base import CHART_DIR

EXAMPLES_DIR = CHART_DIR / "examples"
Objects = list[dict[str, Any]]


def load_values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


EDIT_POOL = {
    "modelName": "Qwen-Image-Edit-2509",
    "model": {"path": "/models/Qwen-Image-Edit-2509"},
    "replicaCount": 2,
    "pdb": {"enabled": False},
    "autoscaling": {"enabled": False},
}

# The value sets users start from: the defaults and the two documented examples; and the GPU
# cluster with a second pool, the editor.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu-cluster": load_values(EXAMPLES_DIR / "gpu-cluster.yaml"),
    "cpu-dev": load_values(EXAMPLES_DIR / "cpu-dev.yaml"),
    "two-pools": load_values(EXAMPLES_DIR / "gpu-cluster.yaml")
    | {"workerPools": {"edit": EDIT_POOL}},
}


def find(objs: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (and `name`); fails the test when it is missing or ambiguous."""
    matches = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Environment variables of the deployment's container, by name."""
    return {e["name"]: e for e in container(deployment).get("env", [])}
