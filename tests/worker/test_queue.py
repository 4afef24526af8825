from __future__ import annotations

import asyncio
import base64
import io

import pytest
import torch
from PIL import Image

from qwen_image_common.contract import JobRequest
from qwen_image_worker.engine.base import ONE_AT_A_TIME, BatchLimit, ImageEngine
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.errors import (
    InferenceFailed,
    JobCancelled,
    NotReady,
    QueueFull,
    TaskTimeout,
)
from qwen_image_worker.metrics import WorkerMetrics
from qwen_image_worker.queue import JobQueue

from .conftest import spec


def job(
    steps: int = 2,
    seeds: tuple[int, ...] = (1,),
    timeout: float = 30.0,
    size: int = 64,
    prompt: str = "a lighthouse",
) -> JobRequest:
    return JobRequest(
        job_id="t",
        prompt=prompt,
        width=size,
        height=size,
        num_inference_steps=steps,
        guidance_scale=4.0,
        seeds=list(seeds),
        timeout_seconds=timeout,
    )


class CountingEngine(Engine):
    """The real engine, recording the seeds of each pipeline call it was asked for."""

    def __init__(self, base: Engine, batch: BatchLimit = ONE_AT_A_TIME) -> None:
        super().__init__(base.pipe, batch=batch)
        self.calls: list[list[int]] = []

    @property
    def seeds(self) -> list[int]:
        return [seed for call in self.calls for seed in call]

    def generate_batch(self, specs, should_stop, on_preview=None):  # type: ignore[no-untyped-def]
        self.calls.append([spec.seed for spec in specs])
        return super().generate_batch(specs, should_stop, on_preview)


class OutOfMemoryOnce(CountingEngine):
    """Stands in for CUDA running out of memory, a fault a CPU test cannot cause for real."""

    def generate_batch(self, specs, should_stop, on_preview=None):  # type: ignore[no-untyped-def]
        if len(self.calls) == 1:  # the first call after the warm-up image
            self.calls.append([spec.seed for spec in specs])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().generate_batch(specs, should_stop, on_preview)


async def started(engine: ImageEngine, max_waiting: int = 1) -> tuple[JobQueue, WorkerMetrics]:
    metrics = WorkerMetrics()
    queue = JobQueue(max_waiting, metrics)
    await queue.start(lambda: engine, spec(num_inference_steps=1))
    return queue, metrics


async def test_jobs_before_start_are_refused_as_not_ready(engine: Engine) -> None:
    queue = JobQueue(1, WorkerMetrics())
    with pytest.raises(NotReady):
        queue.submit(job())


async def test_one_running_plus_queue_size_waiting_then_refused_at_once(engine: Engine) -> None:
    queue, metrics = await started(CountingEngine(engine), max_waiting=1)
    first = queue.submit(job(steps=30, size=256))
    second = queue.submit(job())
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        queue.submit(job())
    assert queue.load().capacity == 2
    results = await asyncio.gather(first.future, second.future)
    assert [len(r.images) for r in results] == [1, 1]
    assert metrics.job_failures.labels("queue_full")._value.get() == 1
    await queue.stop()


async def test_images_are_pngs_of_the_exact_size_with_seed_per_image(engine: Engine) -> None:
    queue, _ = await started(engine)
    request = job(seeds=(5, 6))
    request.width, request.height = 72, 40
    result = await queue.submit(request).future
    assert [img.seed for img in result.images] == [5, 6]
    for img in result.images:
        decoded = Image.open(io.BytesIO(base64.b64decode(img.b64)))
        assert decoded.format == "PNG" and decoded.size == (72, 40)
    await queue.stop()


async def test_a_waiting_job_past_its_deadline_is_dropped_without_running(engine: Engine) -> None:
    counting = CountingEngine(engine)
    queue, _ = await started(counting)
    counting.calls.clear()
    long = queue.submit(job(steps=40, size=256))
    short = queue.submit(job(seeds=(99,), timeout=0.05))
    with pytest.raises(TaskTimeout):
        await short.future
    await long.future
    assert 99 not in counting.seeds
    await queue.stop()


async def test_a_running_job_stops_within_a_step_when_cancelled(engine: Engine) -> None:
    queue, metrics = await started(engine)
    running = queue.submit(job(steps=50, size=512))
    while queue.load().running == 0:
        await asyncio.sleep(0.01)
    queue.cancel(running, JobCancelled())
    with pytest.raises(JobCancelled):
        await running.future
    # The GPU thread is free for the next job, which runs to the end.
    result = await queue.submit(job()).future
    assert len(result.images) == 1
    assert metrics.job_failures.labels("cancelled")._value.get() == 1
    await queue.stop()


async def test_a_cancelled_waiting_job_frees_its_slot_at_once(engine: Engine) -> None:
    queue, _ = await started(engine, max_waiting=1)
    running = queue.submit(job(steps=30, size=256))
    while queue.load().running == 0:
        await asyncio.sleep(0.01)
    waiting = queue.submit(job())
    queue.cancel(waiting, JobCancelled())
    assert queue.load().waiting == 0
    queue.submit(job())  # would be QueueFull if the slot were still taken
    await running.future
    await queue.stop()


async def test_a_failure_fails_that_job_only_and_the_next_is_served(engine: Engine) -> None:
    queue, metrics = await started(OutOfMemoryOnce(engine))
    broken = queue.submit(job())
    with pytest.raises(InferenceFailed, match="Inference failed: GPU out of memory"):
        await broken.future
    result = await queue.submit(job()).future
    assert len(result.images) == 1
    assert metrics.job_failures.labels("inference_failed")._value.get() == 1
    await queue.stop()


async def test_load_reports_running_and_waiting(engine: Engine) -> None:
    queue, metrics = await started(engine, max_waiting=2)
    first = queue.submit(job(steps=30, size=256))
    second = queue.submit(job())
    while queue.load().running == 0:
        await asyncio.sleep(0.01)
    load = queue.load()
    assert (load.ready, load.running, load.waiting, load.capacity) == (True, 1, 1, 3)
    assert metrics.busy._value.get() == 1 and metrics.queue_depth._value.get() == 1
    await asyncio.gather(first.future, second.future)
    assert queue.load().running == 0 and metrics.busy._value.get() == 0
    queue.drain()
    assert not queue.load().ready
    with pytest.raises(NotReady):
        queue.submit(job())
    await queue.stop()
