"""Sends a job to the best worker, and to the next best when one refuses or is unreachable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from qwen_image_common.contract import JobRequest, JobResult
from qwen_image_router.errors import QueueFull, TaskTimeout
from qwen_image_router.metrics import RouterMetrics
from qwen_image_router.outbound.client import JobStream, Refused, WorkerClient
from qwen_image_router.outbound.spread import EventStream, MergedStream, all_or_none, merged, split
from qwen_image_router.pools import ModelPools
from qwen_image_router.registry import WorkerRegistry, WorkerState
from qwen_image_router.scheduling.balancer import Balancer
from qwen_image_router.scheduling.saturation import Saturated

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Dispatched:
    result: JobResult
    worker: str


class Dispatcher:
    """Tries each worker at most once per job; never waits for room to free up."""

    def __init__(
        self,
        registry: WorkerRegistry,
        pools: ModelPools,
        balancer: Balancer,
        client: WorkerClient,
        metrics: RouterMetrics,
    ) -> None:
        self._registry = registry
        self._pools = pools
        self._balancer = balancer
        self._client = client
        self._metrics = metrics

    async def run(self, job: JobRequest, deadline: float, model: str) -> Dispatched:
        """`deadline` is on the event loop's clock; each send carries the time left. Only
        the pool of `model` (a name ModelPools.resolve gave) is tried."""
        result, worker = await self._place(job, deadline, model, self._client.run_job)
        return Dispatched(result, worker)

    async def run_spread(self, job: JobRequest, deadline: float, model: str) -> Dispatched:
        """`run`, with a job of several images split over the pool's idle workers when more
        than one is: a share each (image i keeps its seed), run side by side and answered in
        order. When a share fails, the others are cancelled and the request gets its error."""
        shares = self._shares(job, model)
        if len(shares) == 1:
            return await self.run(job, deadline, model)
        done = await all_or_none([self.run(share, deadline, model) for share in shares])
        result = merged(job, [part.result for part in done])
        return Dispatched(result, ",".join(part.worker for part in done))

    async def open_stream(self, job: JobRequest, deadline: float, model: str) -> EventStream:
        """As `run_spread`, for a streamed job: each share streams from the worker that
        took it, and the request reads them as one stream."""
        shares = self._shares(job, model)
        if len(shares) == 1:
            stream, _ = await self._place(job, deadline, model, self._client.open_stream)
            return stream

        async def close(opened: tuple[JobStream, str]) -> None:
            await opened[0].aclose()

        opened = await all_or_none(
            [self._place(share, deadline, model, self._client.open_stream) for share in shares],
            close,
        )
        return MergedStream(job, shares, [stream for stream, _ in opened])

    def _shares(self, job: JobRequest, model: str) -> list[JobRequest]:
        idle = len(self._balancer.idle(self._pools.workers(model), self._registry.now()))
        shares = split(job, idle)
        if len(shares) > 1:
            logger.info(
                "job %s: %d images over %d idle workers", job.job_id, len(job.seeds), len(shares)
            )
        return shares

    async def _place(
        self,
        job: JobRequest,
        deadline: float,
        model: str,
        send: Callable[[WorkerState, JobRequest], Awaitable[T | Refused]],
    ) -> tuple[T, str]:
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        while True:
            pool = self._pools.workers(model)
            choice = self._balancer.choose(pool, self._registry.now(), tried)
            if isinstance(choice, Saturated):
                self._metrics.queue_full.inc()
                self._metrics.model_queue_full.labels(model=model).inc()
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
            outcome = await send(choice, job.model_copy(update={"timeout_seconds": left}))
            if not isinstance(outcome, Refused):
                return outcome, choice.name
