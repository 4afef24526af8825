"""skaffold.yaml builds both images and deploys the chart with them; `cpu` needs no GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from chart_helpers import container, find
from render_k8s_base import CHART_DIR, REPO_ROOT, objects, render


def skaffold() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    return loaded


def release() -> dict[str, Any]:
    (only,) = skaffold()["deploy"]["helm"]["releases"]
    result: dict[str, Any] = only
    return result


def test_skaffold_yaml_follows_skaffold_schema() -> None:
    """The JSON schema skaffold's own Go module ships for the file's apiVersion; `make test`
    fetches it first (tools/images/skaffold-schema.sh), with the network this test lacks."""
    fetched = subprocess.run(
        [str(REPO_ROOT / "tools/images/skaffold-schema.sh")],
        capture_output=True,
        text=True,
        env=os.environ | {"GOPROXY": "off"},
    )
    assert fetched.returncode == 0, f"run tools/images/skaffold-schema.sh:\n{fetched.stderr}"
    schema = json.loads(Path(fetched.stdout.strip()).read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(skaffold())
    ]
    assert errors == []


def test_schema_version_and_artifacts() -> None:
    config = skaffold()
    assert config["kind"] == "Config"
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert artifacts["qwen-image-router"]["context"] == "."
    assert artifacts["qwen-image-router"]["docker"]["dockerfile"] == "services/router/Dockerfile"
    assert artifacts["qwen-image-worker"]["context"] == "."
    assert (
        artifacts["qwen-image-worker"]["docker"]["dockerfile"] == "services/gpu-worker/Dockerfile"
    )


def test_release_is_the_chart_with_built_images() -> None:
    rel = release()
    assert (REPO_ROOT / rel["chartPath"]).resolve() == CHART_DIR
    templates = rel["setValueTemplates"]
    for artifact, role in (("qwen_image_router", "router"), ("qwen_image_worker", "worker")):
        assert templates[f"{role}.image.repository"] == f"{{{{.IMAGE_REPO_{artifact}}}}}"
        assert templates[f"{role}.image.tag"] == (
            f"{{{{.IMAGE_TAG_{artifact}}}}}@{{{{.IMAGE_DIGEST_{artifact}}}}}"
        )


def substituted(profile: str | None) -> dict[str, Any]:
    """The values skaffold passes for a run, with its image variables filled in."""
    rel = release()
    values_files = rel.get("valuesFiles", [])
    for p in skaffold().get("profiles", []):
        if p["name"] == profile:
            for patch in p["patches"]:
                assert patch["path"] == "/deploy/helm/releases/0/valuesFiles"
                values_files = patch["value"]
    values: dict[str, Any] = {}
    for path in values_files:
        values |= yaml.safe_load((REPO_ROOT / path).read_text())
    for key, template in rel["setValueTemplates"].items():
        filled = re.sub(r"\{\{\.IMAGE_REPO_(\w+)\}\}", r"reg.local/\1", template)
        filled = filled.replace("{{.IMAGE_TAG_", "t-").replace("{{.IMAGE_DIGEST_", "sha256:")
        filled = filled.replace("}}", "")
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = filled
    return values


def test_image_values_reach_the_deployments() -> None:
    objs = objects(render(substituted(None)))
    router = container(find(objs, "Deployment", "qwen-image-router"))["image"]
    worker = container(find(objs, "Deployment", "qwen-image-worker"))["image"]
    assert router == "reg.local/qwen_image_router:t-qwen_image_router@sha256:qwen_image_router"
    assert worker == "reg.local/qwen_image_worker:t-qwen_image_worker@sha256:qwen_image_worker"


def test_cpu_profile_requests_no_gpu() -> None:
    objs = objects(render(substituted("cpu")))
    worker = find(objs, "Deployment", "qwen-image-worker")
    assert "gpu" not in yaml.safe_dump(container(worker)["resources"])
    env = {e["name"]: e.get("value") for e in container(worker)["env"]}
    assert env["MODEL_PATH"] == "demo" and env["DEVICE"] == "cpu"
    forward = skaffold()["portForward"][0]
    assert forward["resourceName"] == "qwen-image-router" and forward["localPort"] == 6002


def test_podman_profile_builds_the_same_dockerfiles() -> None:
    """`-p podman` swaps the builder only: same images, contexts and Dockerfiles."""
    (podman,) = [p for p in skaffold()["profiles"] if p["name"] == "podman"]
    docker = {
        a["image"]: (a["context"], a["docker"]["dockerfile"])
        for a in skaffold()["build"]["artifacts"]
    }
    custom = {
        a["image"]: (a["context"], a["custom"]["dependencies"]["dockerfile"]["path"])
        for a in podman["build"]["artifacts"]
    }
    assert custom == docker
    for artifact in podman["build"]["artifacts"]:
        script, dockerfile = artifact["custom"]["buildCommand"].split()
        assert (REPO_ROOT / script).is_file()
        assert dockerfile == artifact["custom"]["dependencies"]["dockerfile"]["path"]
