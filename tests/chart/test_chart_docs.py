"""docs/kubernetes.md and the README: their commands name files and values the chart has."""

from __future__ import annotations

import re
from typing import Any

import yaml
from render_k8s_base import CHART_DIR, REPO_ROOT, render

DOC = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
VALUE_ROOTS = "worker|router|imageStorage|serviceMonitor|promptRewrite|apiKeys|ingress|httpRoute"


def names_a_value(values: dict[str, Any], dotted: str) -> bool:
    """True for a value of values.yaml, or a key inside one of its free-form maps."""
    node: Any = values
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return isinstance(node, dict) and node is not values and not node
    return True


def nested(flags: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flags.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_referenced_files_exist() -> None:
    paths = set(re.findall(r"(?:-f|--from-file=|-k) (\S+)", DOC))
    paths |= set(re.findall(r"`((?:charts|k8s|services|tests)/[^`\s]+)`", DOC))
    paths.discard("k8s/overlays/prod")  # the reader's own overlay, shown inline
    for path in paths:
        assert (REPO_ROOT / path).exists(), path


def test_set_flags_and_value_names_exist() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    flags = dict(re.findall(r"--set ([\w.]+)=(\S+)", DOC))
    assert flags, "the docs show no --set"
    named = re.findall(rf"`((?:{VALUE_ROOTS})\.[\w.]+?)(?:\.\*|=[^`]*)?`", DOC)
    assert named
    for dotted in set(flags) | set(named):
        assert names_a_value(values, dotted), dotted
    render(nested(flags))  # the documented --set flags pass the schema and render


def test_the_readme_names_files_that_exist() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for path in re.findall(r"-f (\S+)", readme):
        assert (REPO_ROOT / path).exists(), path
