"""The one interface every discovery backend implements."""

from __future__ import annotations

from typing import Protocol

from qwen_image_router.registry import WorkerRegistry


class Discovery(Protocol):
    """Keeps a registry's endpoint set current until stopped.

    `start` returns once the first full view has been handed to the registry (or failed,
    in which case the registry stays empty and the backend keeps trying); `stop` cancels
    and waits for the backend's task or thread.
    """

    async def start(self, registry: WorkerRegistry) -> None: ...

    async def stop(self) -> None: ...
