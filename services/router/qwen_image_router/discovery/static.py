"""Discovery from a fixed list of worker URLs (`qwen-image up`, docker-compose, tests)."""

from __future__ import annotations

from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry


class StaticDiscovery:
    """Hands the registry one fixed worker set; readiness comes from each worker's load."""

    def __init__(self, urls: list[str]) -> None:
        self._endpoints = [WorkerEndpoint(name=url, url=url.rstrip("/")) for url in urls]

    async def start(self, registry: WorkerRegistry) -> None:
        registry.replace(self._endpoints)

    async def stop(self) -> None:
        return None
