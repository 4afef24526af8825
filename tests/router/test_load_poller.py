"""The load poller against real workers: reports in, failures marked, new workers polled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from router_fakes import UNREACHABLE_URL, FakeWorker, serve

from qwen_image_router.load_poller import LoadPoller
from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry


async def until(check: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Wait for `check` to hold; fail the test naming `what` if it never does."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_start_polls_every_worker_once_before_returning() -> None:
    worker = FakeWorker(running=1, waiting=2, capacity=5)
    registry = WorkerRegistry()
    async with serve(worker.app) as url, httpx.AsyncClient() as http:
        registry.replace([WorkerEndpoint(url, url), WorkerEndpoint("gone", UNREACHABLE_URL)])
        poller = LoadPoller(registry, http, interval=10.0, timeout=1.0, block_seconds=1.0)
        await poller.start()
        await poller.stop()
    live, gone = registry.get(url), registry.get("gone")
    assert live is not None and live.load == worker.load and live.load_at is not None
    assert gone is not None and gone.load is None and gone.consecutive_failures == 1


async def test_a_new_worker_is_polled_at_once_not_after_the_interval() -> None:
    worker = FakeWorker()
    registry = WorkerRegistry()
    async with serve(worker.app) as url, httpx.AsyncClient() as http:
        poller = LoadPoller(registry, http, interval=60.0, timeout=1.0, block_seconds=1.0)
        await poller.start()
        registry.replace([WorkerEndpoint("new", url)])
        await until(lambda: (state := registry.get("new")) is not None and state.load, "a poll")
        await poller.stop()


async def test_a_change_of_the_set_polls_only_the_new_workers() -> None:
    old, new = FakeWorker(), FakeWorker()
    registry = WorkerRegistry()
    async with serve(old.app) as old_url, serve(new.app) as new_url, httpx.AsyncClient() as http:
        registry.replace([WorkerEndpoint("old", old_url)])
        poller = LoadPoller(registry, http, interval=60.0, timeout=1.0, block_seconds=1.0)
        await poller.start()
        assert old.load_polls == 1
        for _ in range(3):  # churn: the set changes again and again
            registry.replace([WorkerEndpoint("old", old_url), WorkerEndpoint("new", new_url)])
            await until(lambda: new.load_polls >= 1, "the new worker's poll")
        await asyncio.sleep(0.1)
        assert (old.load_polls, new.load_polls) == (1, 1)
        await poller.stop()


async def test_every_worker_is_polled_each_interval_even_while_the_set_churns() -> None:
    worker = FakeWorker()
    registry = WorkerRegistry()
    async with serve(worker.app) as url, httpx.AsyncClient() as http:
        registry.replace([WorkerEndpoint("w", url)])
        poller = LoadPoller(registry, http, interval=0.2, timeout=1.0, block_seconds=1.0)
        await poller.start()
        async with asyncio.timeout(5):
            while worker.load_polls < 4:
                registry.replace([WorkerEndpoint("w", url)])  # wakes the poller, no new worker
                await asyncio.sleep(0.02)
        await poller.stop()


async def test_reports_follow_the_worker_and_failures_forget_its_load() -> None:
    worker = FakeWorker(ready=False)
    registry = WorkerRegistry()
    async with httpx.AsyncClient() as http:
        async with serve(worker.app) as url:
            registry.replace([WorkerEndpoint("w", url)])
            poller = LoadPoller(registry, http, interval=0.02, timeout=1.0, block_seconds=1.0)
            await poller.start()
            state = registry.get("w")
            assert state is not None and state.load is not None and not state.load.ready
            worker.load = worker.load.model_copy(update={"ready": True})
            await until(lambda: state.load is not None and state.load.ready, "ready report")
        # The worker's server is gone now: its load becomes unknown.
        await until(lambda: state.load is None, "unreachable")
        assert state.consecutive_failures >= 1 and state.blocked_until > 0
        await poller.stop()
