"""Everything the router builds at start-up, in one object the routes are handed."""

from __future__ import annotations

from dataclasses import dataclass

from qwen_image_router.generator import ImageGenerator
from qwen_image_router.pools import ModelPools
from qwen_image_router.registry import WorkerRegistry
from qwen_image_router.storage import ImageStorage


@dataclass(frozen=True)
class RouterRuntime:
    """Lives from lifespan start to stop; the background tasks it feeds are owned there."""

    registry: WorkerRegistry
    pools: ModelPools
    generator: ImageGenerator
    storage: ImageStorage
