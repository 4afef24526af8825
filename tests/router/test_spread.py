"""n > 1 images spread over idle workers: a share each, in order, seeds kept; one share's
failure cancels the others."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import openai
import pytest
from PIL import Image
from router_fakes import FakeWorker, router_client, router_settings, serve

from qwen_image_common.contract import JobFailed, JobRequest, PartialImage
from qwen_image_router.app import create_app
from qwen_image_router.outbound.spread import split

GENERATE = "/v1/images/generations"


def job(seeds: list[int]) -> JobRequest:
    return JobRequest(
        job_id="j",
        prompt="p",
        width=64,
        height=64,
        num_inference_steps=1,
        guidance_scale=4.0,
        seeds=seeds,
        timeout_seconds=1.0,
    )


@pytest.mark.parametrize(
    ("seeds", "workers", "shares"),
    [
        ([5, 6, 7, 8], 2, [[5, 6], [7, 8]]),
        ([5, 6, 7], 2, [[5, 6], [7]]),
        ([5, 6], 4, [[5], [6]]),
        ([5, 6, 7, 8], 1, [[5, 6, 7, 8]]),
        ([5, 6, 7, 8], 0, [[5, 6, 7, 8]]),
    ],
)
def test_shares_are_consecutive_seeds_of_near_equal_size(
    seeds: list[int], workers: int, shares: list[list[int]]
) -> None:
    parts = split(job(seeds), workers)
    assert [part.seeds for part in parts] == shares
    assert len({part.job_id for part in parts}) == len(parts)


def seed_of(b64: str) -> int:
    """The fake worker paints seed % 256 into the red channel."""
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return int(image.convert("RGB").getpixel((0, 0))[0])


async def post_with_workers(tmp_path: Path, workers: list[FakeWorker], body: dict) -> tuple:
    """The router's answer; after it, each hanging worker saw its caller go."""
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(w.app)) for w in workers]
        client = await stack.enter_async_context(router_client(router_settings(tmp_path, urls)))
        while sum(w.load_polls > 1 for w in workers) < len(workers):
            await asyncio.sleep(0.01)  # a load report from every worker
        response = await client.post(GENERATE, json=body)
        for worker in workers:
            if worker.hang:
                await asyncio.wait_for(worker.disconnected.wait(), 5)
    return response.status_code, response.json()


async def test_idle_workers_each_make_a_share_answered_in_order(tmp_path: Path) -> None:
    workers = [FakeWorker(), FakeWorker()]
    body = {"prompt": "cat", "n": 4, "size": "256x256", "seed": 40}
    status, answer = await post_with_workers(tmp_path, workers, body)
    assert status == 200, answer
    assert [seed_of(item["b64_json"]) for item in answer["data"]] == [40, 41, 42, 43]
    assert sorted(w.jobs[0].seeds for w in workers) == [[40, 41], [42, 43]]


async def test_a_busy_worker_leaves_the_request_to_one_batch(tmp_path: Path) -> None:
    workers = [FakeWorker(), FakeWorker(running=1, capacity=3)]
    body = {"prompt": "cat", "n": 3, "size": "256x256", "seed": 40}
    status, answer = await post_with_workers(tmp_path, workers, body)
    assert status == 200, answer
    assert [job.seeds for job in workers[0].jobs] == [[40, 41, 42]] and not workers[1].jobs


async def test_a_failed_share_fails_the_request_and_cancels_the_other(tmp_path: Path) -> None:
    failing, hanging = FakeWorker(), FakeWorker()
    failing.job_status = 500
    hanging.hang = True
    body = {"prompt": "cat", "n": 2, "size": "256x256", "seed": 40}
    status, answer = await post_with_workers(tmp_path, [failing, hanging], body)
    assert (status, answer) == (500, {"detail": "Inference failed: CUDA out of memory"})
    assert hanging.jobs  # and it saw the router go (post_with_workers waited for that)


@asynccontextmanager
async def streaming_router(
    tmp_path: Path, workers: list[FakeWorker]
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(w.app)) for w in workers]
        app = create_app(router_settings(tmp_path, urls))
        url = await stack.enter_async_context(serve(app, lifespan="on"))
        while sum(w.load_polls > 1 for w in workers) < len(workers):
            await asyncio.sleep(0.01)
        yield openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def preview(index: int) -> str:
    return PartialImage(image_index=index, partial_image_index=0, b64="eA==").model_dump_json()


async def test_a_split_stream_counts_images_over_the_whole_request(tmp_path: Path) -> None:
    first, second = FakeWorker(), FakeWorker()
    async with streaming_router(tmp_path, [first, second]) as client:
        for worker in (first, second):
            worker.stream_lines = [preview(0), preview(1)]
        stream = await client.images.generate(
            prompt="cat", n=4, size="256x256", stream=True, partial_images=1, extra_body={"seed": 3}
        )
        events = [event async for event in stream]
    shares = {tuple(w.jobs[0].seeds): w for w in (first, second)}
    assert sorted(shares) == [(3, 4), (5, 6)]
    partials = sorted(
        e.model_extra["image_index"] for e in events if e.type.endswith("partial_image")
    )
    assert partials == [0, 1, 2, 3]
    completed = [e.model_extra["image_index"] for e in events if e.type.endswith("completed")]
    assert completed == [0, 1, 2, 3]


async def test_a_failed_share_of_a_stream_ends_it_and_closes_the_other(tmp_path: Path) -> None:
    failing, hanging = FakeWorker(), FakeWorker()
    failed = JobFailed(status=500, detail="Inference failed: CUDA out of memory")
    failing.stream_lines = [preview(0), failed.model_dump_json()]
    hanging.stream_lines, hanging.hang = [preview(0)], True
    async with streaming_router(tmp_path, [failing, hanging]) as client:
        stream = await client.images.generate(
            prompt="cat", n=2, size="256x256", stream=True, partial_images=1
        )
        with pytest.raises(openai.APIError) as raised:
            async for _ in stream:
                pass
        await asyncio.wait_for(hanging.disconnected.wait(), 5)
    assert raised.value.message == "Inference failed: CUDA out of memory"
