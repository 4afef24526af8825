"""Render charts/qwen-image with the real Helm engine, and write k8s/base from it.

The kustomize base is the chart's default rendering (release and namespace `qwen-image`),
one file per object, without the labels that say Helm manages it;
tests/chart/test_chart_k8s_base.py fails when the two drift apart.
Regenerate with:

    .venv/bin/python tools/render_k8s_base.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = REPO_ROOT / "charts" / "qwen-image"
BASE_DIR = REPO_ROOT / "k8s" / "base"
RELEASE = "qwen-image"
NAMESPACE = "qwen-image"
REGENERATE_COMMAND = ".venv/bin/python tools/render_k8s_base.py"
HEADER = (
    f"# Generated from charts/qwen-image (default values, release {RELEASE},"
    f" namespace {NAMESPACE}).\n# Do not edit: change the chart and run `{REGENERATE_COMMAND}`.\n"
)


def render(
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Render every template of the chart: template path -> rendered text."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(values or {}, name=name, namespace=namespace)


def objects(rendered: dict[str, str], *, include_tests: bool = False) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendering, in template order; NOTES.txt is not one."""
    found: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") or ("/templates/tests/" in path and not include_tests):
            continue
        found.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return found


# Labels that say Helm installed an object: untrue of what `kubectl apply -k` creates.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def without_helm_labels(node: Any) -> Any:
    """A copy of `node` whose every `labels` map lacks HELM_ONLY_LABELS."""
    if isinstance(node, dict):
        return {
            key: (
                {k: v for k, v in value.items() if k not in HELM_ONLY_LABELS}
                if key == "labels" and isinstance(value, dict)
                else without_helm_labels(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [without_helm_labels(item) for item in node]
    return node


def base_objects() -> list[dict[str, Any]]:
    """The objects of k8s/base: the default rendering, labelled as kustomize applies it."""
    return [without_helm_labels(obj) for obj in objects(render())]


def file_name(obj: dict[str, Any]) -> str:
    """One stable file name per object: `<kind>-<name>.yaml`."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def base_files() -> dict[str, str]:
    """The files of k8s/base: each object of the default rendering plus kustomization.yaml."""
    files = {
        file_name(obj): HEADER + yaml.safe_dump(obj, sort_keys=False, width=100)
        for obj in base_objects()
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def write_base(directory: Path = BASE_DIR) -> list[str]:
    """Replace the YAML files of `directory` with the current rendering; returns their names."""
    directory.mkdir(parents=True, exist_ok=True)
    files = base_files()
    for stale in directory.glob("*.yaml"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (directory / name).write_text(text)
    return sorted(files)


def main() -> int:
    for name in write_base():
        print(BASE_DIR.relative_to(REPO_ROOT) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
