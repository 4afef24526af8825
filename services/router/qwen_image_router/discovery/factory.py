"""Builds the discovery backend the settings name."""

from __future__ import annotations

from pathlib import Path

from qwen_image_router.discovery.base import Discovery
from qwen_image_router.discovery.static import StaticDiscovery
from qwen_image_router.settings import RouterSettings

# Kubernetes mounts the pod's own namespace here for every service account.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def pod_namespace(path: Path = POD_NAMESPACE_FILE) -> str:
    """The namespace this pod runs in, or `default` outside a cluster."""
    try:
        return path.read_text().strip() or "default"
    except OSError:
        return "default"


def build_discovery(settings: RouterSettings) -> Discovery:
    if settings.discovery == "kubernetes":
        # Imported here: the kubernetes client is heavy and static deployments never need it.
        from qwen_image_router.discovery.kubernetes import KubernetesDiscovery

        assert settings.worker_service_name is not None
        discovery: Discovery = KubernetesDiscovery(
            namespace=settings.worker_namespace or pod_namespace(),
            service_name=settings.worker_service_name,
            port_name=settings.worker_port_name,
            kubeconfig=settings.kubeconfig,
        )
        return discovery
    return StaticDiscovery(settings.worker_urls)
