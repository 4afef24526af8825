"""Small real servers the router tests talk to over HTTP on 127.0.0.1.

A worker that answers the job contract as told, a worker that drops connections, and an
OpenAI-compatible chat server. They run on the test's own event loop under uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qwen_image_common.contract import (
    EVENTS_MEDIA_TYPE,
    JOBS_PATH,
    LOAD_PATH,
    GeneratedImage,
    JobCompleted,
    JobRequest,
    JobResult,
    Task,
    WorkerLoad,
)
from qwen_image_common.encoding import DEFAULT_COMPRESSION, ImageFormat, encode_image
from qwen_image_router.app import create_app
from qwen_image_router.settings import RouterSettings

UNREACHABLE_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, connect is refused
# What a fake editor makes when the request leaves the size to the pipeline.
EDIT_SIZE = (96, 64)


class _QuietServer(uvicorn.Server):
    """Leaves the process's signal handlers alone: several servers share one test."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: Any, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """Serve `app` for real on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, timeout_keep_alive=5)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def png_bytes(width: int, height: int, seed: int, fmt: ImageFormat = "png") -> bytes:
    """A real image file (PNG unless asked) of the asked size whose colour depends on the seed."""
    image = Image.new("RGB", (width, height), (seed % 256, (seed // 256) % 256, 7))
    return encode_image(image, fmt, DEFAULT_COMPRESSION)


class FakeWorker:
    """Answers GET load and POST jobs like a gpu-worker, as the test sets it up.

    `job_status` 200 answers with PNGs; other statuses with `{"detail": detail}`.
    `hold` keeps every job until `release` is set; `hang` keeps it until the caller
    disconnects, and records that in `disconnected`. A streamed job gets `stream_lines`
    (JobEvent JSON), then with `hang` waits for the caller to go, else gets its result.
    """

    def __init__(
        self,
        *,
        ready: bool = True,
        running: int = 0,
        waiting: int = 0,
        capacity: int = 2,
        model: str = "Qwen-Image",
        task: Task = "generate",
    ) -> None:
        self.load = WorkerLoad(
            model=model,
            task=task,
            ready=ready,
            running=running,
            waiting=waiting,
            capacity=capacity,
        )
        self.job_status = 200
        self.detail = "Inference failed: CUDA out of memory"
        self.raw_body: bytes | None = None
        self.stream_lines: list[str] | None = None
        self.hold = False
        self.hang = False
        self.release = asyncio.Event()
        self.job_arrived = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.jobs: list[JobRequest] = []
        self.load_polls = 0
        self.app = Starlette(
            routes=[
                Route(LOAD_PATH, self._load),
                Route(JOBS_PATH, self._job, methods=["POST"]),
            ]
        )

    async def _load(self, request: Request) -> Response:
        self.load_polls += 1
        return JSONResponse(self.load.model_dump())

    async def _job(self, request: Request) -> Response:
        job = JobRequest.model_validate_json(await request.body())
        self.jobs.append(job)
        self.job_arrived.set()
        if job.stream and self.job_status == 200:
            return StreamingResponse(self._events(job), media_type=EVENTS_MEDIA_TYPE)
        if self.hang:
            await wait_for_disconnect(request)
            self.disconnected.set()
            return Response(status_code=499)
        if self.hold:
            await self.release.wait()
        if self.raw_body is not None:
            return Response(self.raw_body, media_type="application/json")
        if self.job_status != 200:
            return JSONResponse({"detail": self.detail}, status_code=self.job_status)
        return JSONResponse(self._result(job).model_dump())

    async def _events(self, job: JobRequest) -> AsyncIterator[str]:
        for line in self.stream_lines or []:
            yield line + "\n"
        if self.hang:
            try:
                await asyncio.Event().wait()
            finally:
                self.disconnected.set()
        yield JobCompleted(result=self._result(job)).model_dump_json() + "\n"

    def _result(self, job: JobRequest) -> JobResult:
        images = [
            GeneratedImage(
                seed=seed,
                b64=base64.b64encode(
                    png_bytes(
                        job.width or EDIT_SIZE[0],
                        job.height or EDIT_SIZE[1],
                        seed,
                        job.output_format,
                    )
                ).decode(),
            )
            for seed in job.seeds
        ]
        return JobResult(job_id=job.job_id, images=images, queue_seconds=0.0, run_seconds=0.01)


class DroppingWorker:
    """Reports itself ready and free, then drops every job's connection unanswered."""

    def __init__(self) -> None:
        self.jobs_dropped: list[JobRequest] = []
        self._server: asyncio.Server | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if request_line.startswith("GET "):
                load = WorkerLoad(ready=True, running=0, waiting=0, capacity=4)
                payload = load.model_dump_json().encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
            else:
                self.jobs_dropped.append(JobRequest.model_validate_json(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class FakeChatServer:
    """An OpenAI-compatible chat completions endpoint that records what it was asked.

    mode "ok" answers `reply`; "error" answers 500; "slow" never answers (until the
    client goes away); "empty" answers an empty message.
    """

    def __init__(self, reply: str = "A detailed picture.") -> None:
        self.reply = reply
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])]
        )

    async def _complete(self, request: Request) -> Response:
        self.requests.append(json.loads(await request.body()))
        self.headers.append(dict(request.headers))
        if self.mode == "error":
            return JSONResponse({"error": {"message": "model overloaded"}}, status_code=500)
        if self.mode == "slow":
            await wait_for_disconnect(request)
            return Response(status_code=499)
        content = "" if self.mode == "empty" else self.reply
        return JSONResponse(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": self.requests[-1]["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def system_prompt(self, index: int = -1) -> str:
        messages = self.requests[index]["messages"]
        return str(next(m["content"] for m in messages if m["role"] == "system"))


def router_settings(tmp_path: Path, worker_urls: list[str], **overrides: Any) -> RouterSettings:
    """Settings for a router under test: fast polling, a private image folder."""
    values: dict[str, Any] = {
        "worker_urls": worker_urls,
        "image_output_dir": tmp_path / "images",
        "load_poll_interval_seconds": 0.05,
        "load_stale_after_seconds": 2.0,
        "task_timeout_seconds": 30.0,
    }
    values.update(overrides)
    return RouterSettings(**values)


@contextlib.asynccontextmanager
async def router_client(settings: RouterSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The router app with its lifespan running, called in-process over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            yield client


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name{labels}` in Prometheus text, parsed by prometheus_client."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in metrics")
