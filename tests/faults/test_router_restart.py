"""A router restarted under load: gracefully (SIGTERM) and by a crash (SIGKILL)."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fault_stack import Proc, generate, metric_value, start_router, start_worker

from support.processes import free_port, wait_until

pytestmark = pytest.mark.faults

NO_HANG = 30.0
REQUESTS = 12
GAP_SECONDS = 0.25


def images_generated(workers: list[Proc]) -> float:
    return sum(w.metric("qwen_image_worker_images_generated_total") for w in workers)


def test_a_router_restarted_under_load_answers_every_request_it_accepted(
    tmp_path: Path,
) -> None:
    workers = [start_worker(tmp_path, f"worker-{i}") for i in range(2)]
    port = free_port()
    first = start_router(tmp_path, [w.url for w in workers], "router-1", port=port)
    second: Proc | None = None

    def taken_on() -> float:
        """Requests the first router has accepted: running, or answered with images."""
        metrics = first.metrics()
        return metric_value(metrics, "qwen_image_router_in_flight_requests") + metric_value(
            metrics, "qwen_image_router_requests_total", status="200", reason="ok"
        )

    def one(i: int) -> httpx.Response | Exception:
        time.sleep(i * GAP_SECONDS)
        try:
            return generate(first.url, NO_HANG, seed=i, size="256x256", num_inference_steps=15)
        except httpx.TransportError as exc:
            return exc

    try:
        with ThreadPoolExecutor(REQUESTS) as pool:
            futures = [pool.submit(one, i) for i in range(REQUESTS)]
            # Not "four sent": a request sent is not yet accepted, and SIGTERM closes the
            # listening socket at once.
            wait_until(lambda: taken_on() >= 4, NO_HANG, "four requests accepted")
            first.service.signal(signal.SIGTERM)  # stops listening, finishes what it has
            assert first.service.wait(timeout=NO_HANG) == 0
            second = start_router(tmp_path, [w.url for w in workers], "router-2", port=port)
            outcomes = [future.result() for future in futures]
        answered = [o for o in outcomes if isinstance(o, httpx.Response)]
        # Each request got its images, or never got in: connection refused while nothing
        # listened (or reset in the moment the listening socket closed, unread).
        assert all(a.status_code == 200 for a in answered), [a.text[:200] for a in answered]
        assert len(answered) >= 4  # those accepted before SIGTERM, at least
        # Every request the first router took on, it answered with images.
        first_log = first.service.log()
        served_by_first = first_log.count("outcome=ok")
        assert first_log.count("outcome=") == served_by_first >= 1
        served_by_second = second.metric(
            "qwen_image_router_requests_total", status="200", reason="ok"
        )
        assert served_by_first + served_by_second == len(answered)
        # Every image a worker made went to a client.
        assert images_generated(workers) == len(answered)
        for worker in workers:
            assert worker.metric("qwen_image_worker_job_failures_total", reason="cancelled") == 0
    finally:
        for proc in (first, second, *workers):
            if proc is not None:
                proc.stop()


def test_a_router_killed_mid_request_lets_the_worker_stop_the_job(tmp_path: Path) -> None:
    worker = start_worker(tmp_path)
    port = free_port()
    router = start_router(tmp_path, [worker.url], "router-1", port=port)
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(generate, router.url, NO_HANG, num_inference_steps=50)
            wait_until(lambda: worker.load()["running"] == 1, 10, "the job to start")
            router.service.signal(signal.SIGKILL)
            # A dead process answers nothing: the client sees its connection drop at once.
            with pytest.raises(httpx.TransportError):
                future.result()
        # The router's connection to the worker closed with it: the worker stops the job
        # within a step instead of computing for nobody.
        wait_until(
            lambda: worker.metric("qwen_image_worker_job_failures_total", reason="cancelled") == 1,
            5,
            "the worker to cancel the orphaned job",
        )
        assert worker.load()["running"] == 0
        assert worker.metric("qwen_image_worker_images_generated_total") == 0
        router = start_router(tmp_path, [worker.url], "router-2", port=port)
        assert generate(router.url, NO_HANG, num_inference_steps=2).status_code == 200
    finally:
        router.stop()
        worker.stop()
