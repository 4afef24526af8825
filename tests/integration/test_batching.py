"""Batching through real processes: requests that wait together at one worker share a
pipeline call, and each still gets the picture it gets alone."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from support.stack import Stack, png

pytestmark = pytest.mark.integration

SMALL = {"size": "256x256", "num_inference_steps": 8}
PROMPTS = ["a kite", "a much longer prompt: a red kite over a windy beach", "two kites"]


def post(stack: Stack, **body: object) -> httpx.Response:
    return httpx.post(stack.url + "/v1/images/generations", json=body, timeout=120)


def batch_calls(worker_url: str) -> tuple[int, int]:
    """(pipeline calls, images) from the worker's batch-size histogram."""
    values = {}
    for line in httpx.get(worker_url + "/metrics").text.splitlines():
        if line.startswith("qwen_image_worker_batch_images_"):
            name, value = line.split()
            values[name] = float(value)
    return int(values["qwen_image_worker_batch_images_count"]), int(
        values["qwen_image_worker_batch_images_sum"]
    )


def test_waiting_requests_share_a_call_and_get_their_own_pictures(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=1, TASK_QUEUE_SIZE="4").start()
    try:
        worker = stack.worker_urls[0]
        with ThreadPoolExecutor(max_workers=4) as pool:
            blocker = pool.submit(
                post, stack, prompt="busy", size="1024x1024", num_inference_steps=20, seed=1
            )
            while stack.busy_worker() is None:
                time.sleep(0.01)
            answers = list(
                pool.map(lambda i: post(stack, prompt=PROMPTS[i], seed=100 + i, **SMALL), range(3))
            )
            assert blocker.result().status_code == 200
        assert [a.status_code for a in answers] == [200, 200, 200]
        # The blocker alone, then the three waiting requests in one call.
        assert batch_calls(worker) == (2, 4)
        for i, answer in enumerate(answers):
            alone = post(stack, prompt=PROMPTS[i], seed=100 + i, **SMALL)
            assert alone.status_code == 200
            ours = np.asarray(png(answer.json()["data"][0]["b64_json"]), dtype=np.int16)
            theirs = np.asarray(png(alone.json()["data"][0]["b64_json"]), dtype=np.int16)
            # float32 on the CPU: a level of rounding at most, nowhere near another picture.
            assert np.abs(ours - theirs).max() <= 1, i
        assert batch_calls(worker) == (5, 7)
    finally:
        stack.stop()
