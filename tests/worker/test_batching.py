"""Jobs of one shape share pipeline calls: the same pictures as one at a time, each job
answered on its own (tests/worker/test_queue.py covers the queue one image at a time)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_image_worker.engine.acceleration import relative_error
from qwen_image_worker.engine.base import BatchLimit
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.errors import JobCancelled
from qwen_image_worker.metrics import WorkerMetrics
from qwen_image_worker.queue import Job, JobQueue

from .conftest import spec
from .test_queue import CountingEngine, job, started

BATCHING = BatchLimit(max_images=8, max_pixels=4 * 128 * 128)  # 4 images at 128x128


async def running(queue: JobQueue, jobs: int) -> None:
    """Wait until `jobs` jobs run; the jobs these tests batch take 50 steps at 128x128, long
    enough to be seen running."""
    async with asyncio.timeout(30):
        while queue.load().running != jobs:
            await asyncio.sleep(0.005)


def pixels(png_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))), dtype=np.float64)


def test_a_batch_makes_the_pictures_each_image_makes_alone(engine: Engine) -> None:
    # Prompts of different lengths (the pipeline pads and masks), other negative prompts and
    # seeds: each image of the batch is the one its spec makes alone.
    specs = [
        spec(seed=11),
        spec(seed=12, prompt="a much longer prompt about a lighthouse on a rocky coast at dusk"),
        spec(seed=13, prompt="owl", negative_prompt="blurry, low quality"),
    ]
    masks: list[list[int] | None] = []

    def record(_module: object, _args: object, kwargs: dict[str, torch.Tensor]) -> None:
        mask = kwargs.get("encoder_hidden_states_mask")
        masks.append(None if mask is None else mask.sum(dim=1).tolist())

    hook = engine.pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        batched = [array(image) for image in engine.generate_batch(specs, lambda: False)]
    finally:
        hook.remove()
    alone = [array(engine.generate(one, lambda: False)) for one in specs]
    # The batch went through the transformer padded, each prompt's own tokens unmasked.
    lengths = masks[0]
    assert lengths is not None and len(set(lengths)) == 3
    for ours, theirs in zip(batched, alone, strict=True):
        assert ours.shape == (64, 64, 3)
        # float32 on the CPU: at most the order of rounding differs.
        assert relative_error_of(ours, theirs) < 1e-3
    # The check separates: the images of the batch are three different pictures.
    assert relative_error_of(batched[0], batched[1]) > 0.1


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def relative_error_of(ours: np.ndarray, theirs: np.ndarray) -> float:
    return relative_error(torch.from_numpy(ours), torch.from_numpy(theirs))


def test_images_of_another_shape_cannot_share_a_call(engine: Engine) -> None:
    with pytest.raises(ValueError, match="share size, steps and guidance"):
        engine.generate_batch([spec(), spec(width=80)], lambda: False)
    with pytest.raises(ValueError, match="share size, steps and guidance"):
        engine.generate_batch([spec(), replace(spec(), guidance_scale=5.0)], lambda: False)


def test_batch_size_is_bounded_by_images_and_pixels() -> None:
    limit = BatchLimit(max_images=8, max_pixels=1024 * 1024)
    assert [limit.images(s, s) for s in (256, 512, 1024, 1328)] == [8, 4, 1, 1]
    assert BatchLimit().images(16, 16) == 1


async def test_waiting_jobs_of_one_shape_run_in_one_call_in_queue_order(engine: Engine) -> None:
    counting = CountingEngine(engine, batch=BATCHING)
    queue, metrics = await started(counting, max_waiting=5)
    counting.calls.clear()
    began = time.monotonic()
    blocker = queue.submit(job(steps=50, seeds=(1,)))
    await running(queue, 1)
    first = queue.submit(job(size=128, seeds=(10, 11), prompt="a red boat"))
    other = queue.submit(job(seeds=(20,), size=80))
    second = queue.submit(
        job(size=128, seeds=(30,), prompt="a much longer prompt: a blue boat at night")
    )
    too_many = queue.submit(job(size=128, seeds=(40, 41)))  # 5 images: 4 fit one call
    results = await asyncio.gather(
        blocker.future, first.future, other.future, second.future, too_many.future
    )
    # The head job takes the waiting jobs of its shape that fit; the job of another shape
    # runs next, before the one that did not fit.
    assert counting.calls == [[1], [10, 11, 30], [20], [40, 41]]
    assert [[image.seed for image in r.images] for r in results] == [
        [1],
        [10, 11],
        [20],
        [30],
        [40, 41],
    ]
    assert metrics.batch_images._sum.get() == 1 + 3 + 1 + 2
    # The GPU's busy time counts each call once: never more than the time that passed.
    assert 0 < metrics.busy_seconds._value.get() <= time.monotonic() - began
    # Each job's pictures are the ones it makes alone, and one call's images differ.
    alone = await queue.submit(
        job(size=128, seeds=(30,), prompt="a much longer prompt: a blue boat at night")
    ).future
    assert relative_error_of(pixels(results[3].images[0].b64), pixels(alone.images[0].b64)) < 1e-2
    assert not np.array_equal(pixels(results[1].images[0].b64), pixels(results[1].images[1].b64))
    await queue.stop()


async def test_a_job_larger_than_a_call_is_made_in_several(engine: Engine) -> None:
    counting = CountingEngine(engine, batch=BatchLimit(max_images=2, max_pixels=1 << 30))
    queue, _ = await started(counting)
    counting.calls.clear()
    result = await queue.submit(job(seeds=(1, 2, 3, 4))).future
    assert counting.calls == [[1, 2], [3, 4]]
    assert [image.seed for image in result.images] == [1, 2, 3, 4]
    await queue.stop()


async def batch_running(
    engine: Engine, seeds: tuple[int, ...]
) -> tuple[JobQueue, WorkerMetrics, CountingEngine, list[Job]]:
    """A batching queue (3 may wait) running one job per seed in one call: they queued
    behind a job of another size, so they start together."""
    counting = CountingEngine(engine, batch=BATCHING)
    queue, metrics = await started(counting, max_waiting=3)
    blocker = queue.submit(job(steps=30))
    await running(queue, 1)
    jobs = [queue.submit(job(steps=50, size=128, seeds=(seed,))) for seed in seeds]
    await blocker.future
    await running(queue, len(seeds))
    return queue, metrics, counting, jobs


async def test_capacity_is_the_running_batch_plus_the_waiting_room(engine: Engine) -> None:
    queue, _, _, batch = await batch_running(engine, (1, 2, 3))
    load = queue.load()
    assert (load.running, load.waiting, load.capacity) == (3, 0, 6)
    waiting = [queue.submit(job()) for _ in range(3)]
    load = queue.load()
    assert load.running + load.waiting == load.capacity
    await asyncio.gather(*(j.future for j in [*batch, *waiting]))
    assert queue.load().capacity == 4
    await queue.stop()


async def test_one_cancelled_job_of_a_batch_ends_at_once_and_the_others_finish(
    engine: Engine,
) -> None:
    queue, metrics, counting, (stays, leaves) = await batch_running(engine, (1, 2))
    queue.cancel(leaves, JobCancelled())
    with pytest.raises(JobCancelled):
        await leaves.future
    # Answered while the batch still runs: the other job is not done yet.
    assert not stays.future.done()
    result = await stays.future
    assert [image.seed for image in result.images] == [1]
    assert counting.calls[-1] == [1, 2]
    assert metrics.job_failures.labels("cancelled")._value.get() == 1
    await queue.stop()


async def test_a_batch_whose_every_job_is_cancelled_stops_within_a_step(engine: Engine) -> None:
    queue, _, counting, jobs = await batch_running(engine, (1, 2))
    for one in jobs:
        queue.cancel(one, JobCancelled())
    for one in jobs:
        with pytest.raises(JobCancelled):
            await one.future
    # The GPU thread is free again: the next job runs at once and to the end.
    result = await queue.submit(job()).future
    assert len(result.images) == 1
    assert counting.calls[-2:] == [[1, 2], [1]]
    await queue.stop()
