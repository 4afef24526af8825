"""The router's peers misbehaving: a worker that answers garbage, a rewrite API down or slow."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fault_stack import (
    generate,
    ready_count,
    serve_in_thread,
    spec_error,
    start_router,
    start_worker,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qwen_image_common.contract import JOBS_PATH, LOAD_PATH, WorkerLoad
from support.processes import free_port, wait_until

pytestmark = pytest.mark.faults

NO_HANG = 30.0


class GarbageWorker:
    """Speaks the worker's load endpoint correctly (ready, idle) but answers every job with
    an HTML page and status 200, as a misrouted proxy or a broken build might.

    The real worker cannot be made to do this: its answers come from the job contract's
    own models, so this is a small server of the test's own.
    """

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.jobs = 0
        self.app = Starlette(
            routes=[Route(LOAD_PATH, self._load), Route(JOBS_PATH, self._job, methods=["POST"])]
        )

    async def _load(self, request: Request) -> Response:
        load = WorkerLoad(ready=self.ready.is_set(), running=0, waiting=0, capacity=8)
        return JSONResponse(load.model_dump())

    async def _job(self, request: Request) -> Response:
        await request.body()
        self.jobs += 1
        return Response(b"<html><body>502 Bad Gateway</body></html>", media_type="text/html")


def test_a_worker_answering_garbage_fails_one_request_then_is_avoided(tmp_path: Path) -> None:
    garbage = GarbageWorker()
    worker = start_worker(tmp_path, TASK_QUEUE_SIZE="4")
    with serve_in_thread(garbage.app) as garbage_url:
        router = start_router(
            tmp_path, [garbage_url, worker.url], ready_workers=1, LOAD_STALE_AFTER_SECONDS="5"
        )
        try:
            with ThreadPoolExecutor(1) as pool:
                # Occupy the real worker, then let the garbage one look idler than it.
                long = pool.submit(generate, router.url, NO_HANG, num_inference_steps=40)
                wait_until(lambda: worker.load()["running"] == 1, 10, "the long job")
                garbage.ready.set()
                wait_until(lambda: ready_count(router) == 2, 5, "the garbage worker ready")
                first = generate(router.url, NO_HANG, num_inference_steps=2)
                # The next requests avoid the worker that answered garbage, although its load
                # reports still say it is idle.
                after = [generate(router.url, NO_HANG, num_inference_steps=2) for _ in range(3)]
                assert long.result().status_code == 200
            assert spec_error(first) == "Inference failed: the worker sent an unreadable result"
            assert first.headers["x-should-retry"] == "false"
            assert [a.status_code for a in after] == [200, 200, 200]
            assert garbage.jobs == 1
            requests = "qwen_image_router_requests_total"
            assert router.metric(requests, status="500", reason="inference_failed") == 1
            assert router.metric(requests, status="200", reason="ok") == 4
            assert "sent an unreadable result" in router.service.log()
        finally:
            router.stop()
            worker.stop()


class ChatServer:
    """An OpenAI-compatible chat endpoint that never answers (until the caller leaves)."""

    def __init__(self) -> None:
        self.calls = 0
        self.gone = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._slow, methods=["POST"])])

    async def _slow(self, request: Request) -> Response:
        self.calls += 1
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.gone += 1
        return Response(status_code=499)


def test_a_rewrite_api_down_or_slow_falls_back_to_the_original_prompt(tmp_path: Path) -> None:
    worker = start_worker(tmp_path)
    chat = ChatServer()
    rewrite = {"ENABLE_PROMPT_REWRITE": "true", "OPENAI_MODEL": "rewriter"}
    down_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with serve_in_thread(chat.app) as chat_url:
        down = start_router(
            tmp_path, [worker.url], "router-down", **rewrite, OPENAI_BASE_URL=down_url
        )
        slow = start_router(
            tmp_path,
            [worker.url],
            "router-slow",
            **rewrite,
            OPENAI_BASE_URL=chat_url + "/v1",
            PROMPT_REWRITE_TIMEOUT_SECONDS="1",
        )
        # A rewrite slower than the whole request: TASK_TIMEOUT ends it.
        hopeless = start_router(
            tmp_path,
            [worker.url],
            "router-hopeless",
            **rewrite,
            OPENAI_BASE_URL=chat_url + "/v1",
            TASK_TIMEOUT="1.5",
        )
        try:
            for router in (down, slow):
                answer = generate(router.url, NO_HANG, num_inference_steps=2)
                assert answer.status_code == 200, answer.text
                assert "revised_prompt" not in answer.json()["data"][0]
                assert router.metric("qwen_image_router_prompt_rewrite_failures_total") == 1
                assert "prompt rewrite failed" in router.service.log()
            timed_out = generate(hopeless.url, NO_HANG, num_inference_steps=2)
            assert spec_error(timed_out) == "Task timeout"
            requests = "qwen_image_router_requests_total"
            assert hopeless.metric(requests, status="500", reason="timeout") == 1
            # Every rewrite call that was given up was closed, none left hanging.
            wait_until(lambda: chat.gone == chat.calls == 2, 5, "the rewrite calls to close")
            assert worker.metric("qwen_image_worker_images_generated_total") == 2
        finally:
            for proc in (down, slow, hopeless, worker):
                proc.stop()
