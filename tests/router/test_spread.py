"""n > 1 images spread over idle workers: a share each, in order, seeds kept; one share's
failure cancels the others."""

from __future__ import annotations

import asyncio
import base64
import io
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from PIL import Image
from router_fakes import FakeWorker, router_client, router_settings, serve

from qwen_image_common.contract import JobRequest
from qwen_image_router.dispatch import split

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
