"""Fixtures of the `k8s` tests: a real control plane on loopback, built when missing.

One etcd + kube-apiserver serves the whole session (tests isolate themselves by
namespace); demo-model workers listen on 127.0.0.2-4 for the tests that send jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_helpers import LoopbackWorker, helm_install, helm_uninstall, start_loopback_workers
from kubernetes import client

from support.control_plane import ControlPlane


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with TLS, RBAC and service-account tokens, for the session."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane")).start()
    yield plane
    plane.stop()


@pytest.fixture
def admin(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """A Kubernetes client with cluster-admin rights (the system:masters group)."""
    # The API server may have been restarted by an earlier test that failed half-way.
    control_plane.start_apiserver()
    with control_plane.api_client() as api:
        yield api


@pytest.fixture
def namespace(admin: client.ApiClient, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test, named after it."""
    base = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40]
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(admin).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )
    return name


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str) -> Iterator[None]:
    """The chart installed with default values in `namespace` (its ServiceAccount, Role,
    worker Service); uninstalled afterwards, so later controllers find nothing to run."""
    helm_install(control_plane, namespace, {})
    yield
    control_plane.start_apiserver()
    helm_uninstall(control_plane, namespace)


@pytest.fixture(scope="session")
def loopback_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LoopbackWorker]]:
    """Three demo-model workers on 127.0.0.2, .3 and .4: each its own loopback address."""
    directory: Path = tmp_path_factory.mktemp("workers")
    workers = start_loopback_workers(directory, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    yield workers
    for worker in workers:
        worker.service.stop()
