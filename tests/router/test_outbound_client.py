"""WorkerClient against real HTTP servers answering like a worker."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from router_fakes import UNREACHABLE_URL, DroppingWorker, FakeWorker, serve

from qwen_image_common.contract import JobRequest, JobResult, WorkerLoad
from qwen_image_router.errors import InferenceFailed, TaskTimeout
from qwen_image_router.outbound.client import Refused, WorkerClient
from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry, WorkerState

BLOCK = 5.0


def job(**overrides: object) -> JobRequest:
    values: dict[str, object] = {
        "job_id": "job-1",
        "prompt": "a lighthouse at dusk",
        "width": 64,
        "height": 32,
        "num_inference_steps": 4,
        "guidance_scale": 4.0,
        "seeds": [7, 8],
        "timeout_seconds": 10.0,
    }
    values.update(overrides)
    return JobRequest.model_validate(values)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client:
        yield client


def registered(url: str) -> tuple[WorkerRegistry, WorkerState]:
    registry = WorkerRegistry()
    registry.replace([WorkerEndpoint(name="w", url=url)])
    state = registry.get("w")
    assert state is not None
    registry.record_load("w", WorkerLoad(ready=True, running=0, waiting=0, capacity=2))
    return registry, state


async def test_a_result_comes_back_with_one_png_per_seed(http: httpx.AsyncClient) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url:
        registry, state = registered(url)
        result = await WorkerClient(http, registry, BLOCK).run_job(state, job())
    assert isinstance(result, JobResult)
    assert [image.seed for image in result.images] == [7, 8]
    assert base64.b64decode(result.images[0].b64).startswith(b"\x89PNG")
    assert worker.jobs[0].seeds == [7, 8] and worker.jobs[0].width == 64
    assert state.in_flight == 0


async def test_in_flight_counts_the_job_while_it_is_out(http: httpx.AsyncClient) -> None:
    worker = FakeWorker()
    worker.hold = True
    async with serve(worker.app) as url:
        registry, state = registered(url)
        task = asyncio.create_task(WorkerClient(http, registry, BLOCK).run_job(state, job()))
        await asyncio.wait_for(worker.job_arrived.wait(), 5)
        assert state.in_flight == 1
        worker.release.set()
        assert isinstance(await task, JobResult)
    assert state.in_flight == 0


@pytest.mark.parametrize(("status", "reason"), [(429, "full"), (503, "not_ready")])
async def test_a_refusal_blocks_the_worker_and_lets_the_caller_try_another(
    http: httpx.AsyncClient, status: int, reason: str
) -> None:
    worker = FakeWorker()
    worker.job_status = status
    worker.detail = "Task queue is full"
    async with serve(worker.app) as url:
        registry, state = registered(url)
        outcome = await WorkerClient(http, registry, BLOCK).run_job(state, job())
    assert isinstance(outcome, Refused) and outcome.reason == reason
    assert state.blocked_until > registry.now()
    assert state.load is not None  # a refusal says nothing about reachability


async def test_a_worker_timeout_is_the_task_timeout(http: httpx.AsyncClient) -> None:
    worker = FakeWorker()
    worker.job_status = 504
    worker.detail = "Task timeout"
    async with serve(worker.app) as url:
        registry, state = registered(url)
        with pytest.raises(TaskTimeout):
            await WorkerClient(http, registry, BLOCK).run_job(state, job())


@pytest.mark.parametrize(
    ("status", "worker_detail", "detail"),
    [
        (500, "Inference failed: CUDA out of memory", "Inference failed: CUDA out of memory"),
        (422, "seeds: too many", "Inference failed: worker answered 422: seeds: too many"),
    ],
    ids=["the worker's own failure", "an unexpected status"],
)
async def test_a_failed_job_is_an_inference_failure_with_the_workers_detail(
    http: httpx.AsyncClient, status: int, worker_detail: str, detail: str
) -> None:
    worker = FakeWorker()
    worker.job_status = status
    worker.detail = worker_detail
    async with serve(worker.app) as url:
        registry, state = registered(url)
        with pytest.raises(InferenceFailed) as caught:
            await WorkerClient(http, registry, BLOCK).run_job(state, job())
    assert caught.value.detail == detail
    assert state.in_flight == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"job_id": "job-1"}',
        b'{"job_id":"job-1","images":[],"queue_seconds":0,"run_seconds":0}',
    ],
)
async def test_an_unreadable_or_incomplete_result_is_an_inference_failure(
    http: httpx.AsyncClient, body: bytes
) -> None:
    worker = FakeWorker()
    worker.raw_body = body
    async with serve(worker.app) as url:
        registry, state = registered(url)
        with pytest.raises(InferenceFailed):
            await WorkerClient(http, registry, BLOCK).run_job(state, job())


async def test_a_refused_connection_marks_the_worker_unreachable(http: httpx.AsyncClient) -> None:
    registry, state = registered(UNREACHABLE_URL)
    outcome = await WorkerClient(http, registry, BLOCK).run_job(state, job())
    assert outcome == Refused("unreachable")
    assert state.load is None and state.consecutive_failures == 1
    assert state.in_flight == 0


async def test_a_dropped_connection_marks_the_worker_unreachable(http: httpx.AsyncClient) -> None:
    dropping = DroppingWorker()
    async with dropping.running() as url:
        registry, state = registered(url)
        outcome = await WorkerClient(http, registry, BLOCK).run_job(state, job())
    assert outcome == Refused("unreachable")
    assert len(dropping.jobs_dropped) == 1
    assert state.load is None and state.blocked_until > registry.now()


async def test_cancelling_a_job_closes_its_connection_so_the_worker_cancels(
    http: httpx.AsyncClient,
) -> None:
    worker = FakeWorker()
    worker.hang = True
    async with serve(worker.app) as url:
        registry, state = registered(url)
        task = asyncio.create_task(WorkerClient(http, registry, BLOCK).run_job(state, job()))
        await asyncio.wait_for(worker.job_arrived.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(worker.disconnected.wait(), 5)
    assert state.in_flight == 0
