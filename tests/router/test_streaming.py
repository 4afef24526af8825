"""Streamed answers through a real router process to fake workers: what comes as JSON
before the first event, what comes as an OpenAI error event after it, and that a client
gone or a timeout closes the worker's stream (which cancels the job there)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from router_fakes import EDIT_SIZE, FakeWorker, metric_value, png_bytes, router_settings, serve

from qwen_image_common.contract import JobFailed, PartialImage
from qwen_image_router.app import create_app

PREVIEW = PartialImage(image_index=0, partial_image_index=0, b64=base64.b64encode(b"x").decode())
FAKE_EDIT_B64 = base64.b64encode(png_bytes(*EDIT_SIZE, seed=9)).decode()
FAILED = JobFailed(status=500, detail="Inference failed: CUDA out of memory")


@asynccontextmanager
async def router(
    tmp_path: Path, worker: FakeWorker, **overrides: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serve(worker.app) as worker_url:
        app = create_app(router_settings(tmp_path, [worker_url], **overrides))
        async with serve(app, lifespan="on") as url:
            yield openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


async def generate(client: openai.AsyncOpenAI, **body: Any) -> Any:
    return await client.images.generate(
        prompt="a cat", size="256x256", stream=True, partial_images=1, **body
    )


async def test_a_failure_after_the_first_event_is_an_openai_error_event(tmp_path: Path) -> None:
    worker = FakeWorker()
    worker.stream_lines = [PREVIEW.model_dump_json(), FAILED.model_dump_json()]
    async with router(tmp_path, worker) as client:
        stream = await generate(client)
        first = await anext(stream)
        assert (first.type, first.partial_image_index) == ("image_generation.partial_image", 0)
        with pytest.raises(openai.APIError) as raised:
            await anext(stream)
    assert raised.value.message == "Inference failed: CUDA out of memory"
    assert raised.value.body == {
        "type": "server_error",
        "code": "inference_failed",
        "message": "Inference failed: CUDA out of memory",
        "param": None,
    }


async def test_a_failure_before_the_first_event_is_the_specs_json_answer(tmp_path: Path) -> None:
    worker = FakeWorker()
    worker.stream_lines = [FAILED.model_dump_json()]
    async with router(tmp_path, worker) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await generate(client)
    assert raised.value.body == {"detail": "Inference failed: CUDA out of memory"}


async def test_a_full_worker_is_the_specs_queue_full_answer(tmp_path: Path) -> None:
    worker = FakeWorker()
    worker.job_status = 429
    worker.detail = "Task queue is full"
    async with router(tmp_path, worker) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await generate(client)
    assert raised.value.body == {"detail": "Task queue is full"}


@pytest.mark.parametrize("lines", [[], [PREVIEW.model_dump_json()]])
async def test_a_timeout_closes_the_workers_stream(tmp_path: Path, lines: list[str]) -> None:
    worker = FakeWorker()
    worker.stream_lines, worker.hang = lines, True
    async with router(tmp_path, worker, task_timeout_seconds=1.0) as client:
        if not lines:
            with pytest.raises(openai.InternalServerError) as before:
                await generate(client)
            assert before.value.body == {"detail": "Task timeout"}
        else:
            stream = await generate(client)
            await anext(stream)
            with pytest.raises(openai.APIError) as after:
                await anext(stream)
            assert after.value.message == "Task timeout"
        await asyncio.wait_for(worker.disconnected.wait(), 5)


async def test_a_client_gone_mid_stream_closes_the_workers_stream(tmp_path: Path) -> None:
    worker = FakeWorker()
    worker.stream_lines, worker.hang = [PREVIEW.model_dump_json()], True
    async with serve(worker.app) as worker_url:
        app = create_app(router_settings(tmp_path, [worker_url]))
        async with serve(app, lifespan="on") as url, httpx.AsyncClient() as http:
            body = {"prompt": "a cat", "stream": True, "partial_images": 1}
            async with http.stream("POST", url + "/v1/images/generations", json=body) as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                assert answer.headers["x-accel-buffering"] == "no"
                lines = answer.aiter_lines()
                assert await anext(lines) == "event: image_generation.partial_image"
            await asyncio.wait_for(worker.disconnected.wait(), 5)


async def test_every_image_completes_in_order_with_its_index(tmp_path: Path) -> None:
    worker = FakeWorker()
    async with router(tmp_path, worker) as client:
        events = [event async for event in await generate(client, n=3, output_format="webp")]
    assert [(e.type, e.model_extra["image_index"]) for e in events] == [
        ("image_generation.completed", i) for i in range(3)
    ]
    assert all(e.output_format == "webp" and e.size == "256x256" for e in events)
    assert worker.jobs[0].seeds == [worker.jobs[0].seeds[0] + i for i in range(3)]


async def test_streamed_answers_are_counted_once_each_and_timed(tmp_path: Path) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as worker_url:
        app = create_app(router_settings(tmp_path, [worker_url]))
        async with serve(app, lifespan="on") as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            assert [event async for event in await generate(client)]
            worker.stream_lines = [FAILED.model_dump_json()]
            with pytest.raises(openai.InternalServerError):
                await generate(client)
            async with httpx.AsyncClient() as http:
                text = (await http.get(url + "/metrics")).text
    requests = "qwen_image_router_requests_total"
    assert metric_value(text, requests, status="200", reason="ok") == 1
    assert metric_value(text, requests, status="500", reason="inference_failed") == 1
    assert metric_value(text, "qwen_image_router_request_duration_seconds_count") == 2


async def test_an_edit_streams_image_edit_events_sized_as_the_pipeline_chose(
    tmp_path: Path,
) -> None:
    editor = FakeWorker(model="Qwen-Image-Edit-2509", task="edit")
    preview = PartialImage(image_index=1, partial_image_index=0, b64=FAKE_EDIT_B64)
    editor.stream_lines = [preview.model_dump_json()]
    async with router(tmp_path, editor) as client:
        stream = await client.images.edit(
            image=[("a.png", png_bytes(8, 8, 1), "image/png")] * 2,
            prompt="make it blue",
            n=2,
            stream=True,
            partial_images=1,
        )
        events = [event async for event in stream]
    assert [(e.type, e.model_extra["image_index"]) for e in events] == [
        ("image_edit.partial_image", 1),
        ("image_edit.completed", 0),
        ("image_edit.completed", 1),
    ]
    made = "x".join(map(str, EDIT_SIZE))
    assert {e.size for e in events} == {made}
    assert events[-1].usage.output_tokens == EDIT_SIZE[0] * EDIT_SIZE[1] // 256
    (job,) = editor.jobs
    assert (job.stream, job.partial_images, len(job.pictures), job.width) == (True, 1, 2, None)


async def test_an_edit_that_fails_before_its_first_event_is_a_json_answer(
    tmp_path: Path,
) -> None:
    editor = FakeWorker(model="Qwen-Image-Edit-2509", task="edit")
    editor.stream_lines = [FAILED.model_dump_json()]
    async with router(tmp_path, editor) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.images.edit(
                image=("a.png", png_bytes(8, 8, 1), "image/png"),
                prompt="make it blue",
                size="256x256",
                stream=True,
            )
    assert raised.value.body == {"detail": "Inference failed: CUDA out of memory"}


async def test_an_edit_preview_that_is_no_picture_is_an_error_event(tmp_path: Path) -> None:
    # Without a size, each event's size is read from its picture: "x" has none to read.
    editor = FakeWorker(model="Qwen-Image-Edit-2509", task="edit")
    editor.stream_lines = [PREVIEW.model_dump_json()]
    async with router(tmp_path, editor) as client:
        stream = await client.images.edit(
            image=("a.png", png_bytes(8, 8, 1), "image/png"), prompt="x", stream=True
        )
        with pytest.raises(openai.APIError) as raised:
            await anext(stream)
    assert raised.value.message.startswith("Inference failed: the worker sent an image")
