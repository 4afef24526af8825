"""Keeps every worker's load report fresh by polling GET /internal/v1/load.

Every worker is polled every interval, each on its own with a short timeout, so a slow one
holds up no other's report; a worker that does not answer well is recorded unreachable,
so its load is unknown until it answers again, and one whose polls keep timing out is
recorded silent, so its jobs are given up and sent elsewhere. A change of the worker set
triggers a poll of the new workers at once, so they get jobs soon; the others keep their
rhythm (with hundreds of workers, a churning set would otherwise poll all of them on every
change).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import httpx
from pydantic import ValidationError

from qwen_image_common.contract import LOAD_PATH, WorkerLoad
from qwen_image_common.tasks import cancel_and_wait
from qwen_image_router.registry import WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)

# A worker whose polls fail this many times in a row, the last by a timeout, has stopped
# answering (hung, paused, cut off); one failure may be a hiccup.
SILENT_AFTER_FAILURES = 2


class LoadPoller:
    """The background task that feeds worker load into the registry."""

    def __init__(
        self,
        registry: WorkerRegistry,
        http: httpx.AsyncClient,
        interval: float,
        timeout: float,
        block_seconds: float,
    ) -> None:
        self._registry = registry
        self._http = http
        self._interval = interval
        self._timeout = timeout
        self._block_seconds = block_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Polls still out, by worker: a worker slow to answer never holds up the others'
        # reports (they would go stale, and the router would think nobody ready).
        self._polling: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Poll once, so the router knows its workers before it serves, then keep polling."""
        self._registry.on_change(self._wake.set)
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="load-poller")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        polls = list(self._polling.values())
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(worker) for worker in self._registry.workers()))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time() + self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_round - loop.time()))
            self._wake.clear()
            every = loop.time() >= next_round
            if every:
                next_round = loop.time() + self._interval
            for worker in self._registry.workers():
                if worker.name in self._polling or not (every or never_polled(worker)):
                    continue
                poll = asyncio.create_task(self._poll(worker), name=f"poll {worker.name}")
                self._polling[worker.name] = poll
                poll.add_done_callback(functools.partial(self._forget_poll, worker.name))

    def _forget_poll(self, name: str, _: asyncio.Task[None]) -> None:
        self._polling.pop(name, None)

    async def _poll(self, worker: WorkerState) -> None:
        try:
            response = await self._http.get(worker.endpoint.url + LOAD_PATH, timeout=self._timeout)
            response.raise_for_status()
            load = WorkerLoad.model_validate_json(response.content)
        except (httpx.HTTPError, ValidationError) as exc:
            if worker.consecutive_failures == 0:
                logger.warning("worker %s: load poll failed (%s)", worker.name, type(exc).__name__)
            self._registry.record_unreachable(worker.name, self._block_seconds)
            # Only silence counts: a draining worker refuses new connections while it
            # finishes the jobs it has, and a dead one's connections are closed already.
            silent = worker.consecutive_failures >= SILENT_AFTER_FAILURES
            if silent and isinstance(exc, httpx.TimeoutException):
                if not worker.silent.is_set():
                    logger.warning(
                        "worker %s stopped answering; its jobs go elsewhere", worker.name
                    )
                self._registry.record_silent(worker.name)
            return
        was_ready = worker.load is not None and worker.load.ready
        self._registry.record_load(worker.name, load)
        if load.ready != was_ready:
            logger.info("worker %s is %s", worker.name, "ready" if load.ready else "not ready")


def never_polled(worker: WorkerState) -> bool:
    return worker.load_at is None and worker.consecutive_failures == 0
