"""Sends a job to the best worker, and to the next best when one refuses or is unreachable."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from qwen_image_common.contract import JobRequest, JobResult
from qwen_image_router.errors import QueueFull, TaskTimeout
from qwen_image_router.metrics import RouterMetrics
from qwen_image_router.outbound.client import Refused, WorkerClient
from qwen_image_router.registry import WorkerRegistry
from qwen_image_router.scheduling.balancer import Balancer
from qwen_image_router.scheduling.saturation import Saturated

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatched:
    result: JobResult
    worker: str


class Dispatcher:
    """Tries each worker at most once per job; never waits for room to free up."""

    def __init__(
        self,
        registry: WorkerRegistry,
        balancer: Balancer,
        client: WorkerClient,
        metrics: RouterMetrics,
    ) -> None:
        self._registry = registry
        self._balancer = balancer
        self._client = client
        self._metrics = metrics

    async def run(self, job: JobRequest, deadline: float) -> Dispatched:
        """`deadline` is on the event loop's clock; each send carries the time left."""
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        while True:
            choice = self._balancer.choose(self._registry.workers(), self._registry.now(), tried)
            if isinstance(choice, Saturated):
                self._metrics.queue_full.inc()
                logger.info(
                    "job %s: no worker has room (%s; tried %d)",
                    job.job_id,
                    choice.reason,
                    len(tried),
                )
                raise QueueFull()
            left = deadline - loop.time()
            if left <= 0:
                raise TaskTimeout()
            tried.append(choice.name)
            outcome = await self._client.run_job(
                choice, job.model_copy(update={"timeout_seconds": left})
            )
            if not isinstance(outcome, Refused):
                return Dispatched(outcome, choice.name)
