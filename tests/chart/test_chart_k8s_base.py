"""k8s/base is the chart's default rendering, file for file."""

from __future__ import annotations

from pathlib import Path

import yaml
from render_k8s_base import BASE_DIR, NAMESPACE, REGENERATE_COMMAND, base_files, base_objects


def test_base_equals_default_rendering() -> None:
    expected = base_files()
    on_disk = {p.name: p.read_text() for p in BASE_DIR.glob("*.yaml")}
    assert sorted(on_disk) == sorted(expected), f"k8s/base is stale: run {REGENERATE_COMMAND}"
    for name, text in expected.items():
        assert on_disk[name] == text, f"k8s/base/{name} is stale: run {REGENERATE_COMMAND}"


def test_kustomization_lists_every_object_of_the_release() -> None:
    kustomization = yaml.safe_load((BASE_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    resources = kustomization["resources"]
    assert all((BASE_DIR / r).is_file() for r in resources)
    from_files = [yaml.safe_load((BASE_DIR / r).read_text()) for r in resources]
    rendered = base_objects()
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(from_files, key=key) == sorted(rendered, key=key)
    # The helm test hook is not a resource of the plain install.
    assert "Pod" not in {o["kind"] for o in from_files}


def test_no_object_of_the_base_claims_helm_manages_it() -> None:
    text = "".join(p.read_text() for p in BASE_DIR.glob("*.yaml"))
    assert "managed-by: Helm" not in text and "helm.sh/chart" not in text


def test_overlay_example_patches_the_model_volume() -> None:
    """docs/kubernetes.md replaces volume 0 of the worker: it must be the model volume."""
    worker = yaml.safe_load((BASE_DIR / "deployment-qwen-image-worker.yaml").read_text())
    assert worker["spec"]["template"]["spec"]["volumes"][0]["name"] == "model"
    docs = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    assert "path: /spec/template/spec/volumes/0" in docs
