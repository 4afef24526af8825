"""Workers that die, hang, drain or start slowly, under a real router.

Each test checks what the client sees (images, or one of the spec's errors, never a hang
past TASK_TIMEOUT), what the metrics show, and that every request got exactly one answer.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fault_stack import (
    Proc,
    generate,
    metric_value,
    ready_count,
    spec_error,
    start_router,
    start_worker,
)

from support.processes import wait_until
from support.stack import png

pytestmark = pytest.mark.faults

TASK_TIMEOUT = 20.0
# A client that waits longer than this saw a hang.
NO_HANG = TASK_TIMEOUT + 10


def busy(workers: list[Proc]) -> Proc | None:
    for worker in workers:
        try:
            if worker.load()["running"]:
                return worker
        except httpx.HTTPError:
            continue
    return None


def requests_total(router: Proc, status: str, reason: str) -> float:
    return router.metric("qwen_image_router_requests_total", status=status, reason=reason)


def test_a_worker_killed_mid_request_is_retried_elsewhere(tmp_path: Path) -> None:
    workers = [start_worker(tmp_path, f"worker-{i}", TASK_QUEUE_SIZE="3") for i in range(2)]
    router = start_router(tmp_path, [w.url for w in workers])
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(
                    generate, router.url, NO_HANG, seed=i, size="256x256", num_inference_steps=20
                )
                for i in range(4)
            ]
            wait_until(lambda: busy(workers) is not None, 10, "a worker to start a job")
            victim = busy(workers)
            assert victim is not None
            victim.service.signal(signal.SIGKILL)
            answers = [future.result() for future in futures]
        # Jobs are deterministic per seed, so the router sent the dead worker's jobs to the
        # other one: every client got its images.
        assert [a.status_code for a in answers] == [200] * 4, [a.text[:200] for a in answers]
        assert all(png(a.json()["data"][0]["b64_json"]).size == (256, 256) for a in answers)
        survivor = next(w for w in workers if w is not victim)
        assert survivor.metric("qwen_image_worker_images_generated_total") == 4
        assert requests_total(router, "200", "ok") == 4
        wait_until(lambda: ready_count(router) == 1, 5, "the router to drop the dead worker")
    finally:
        for proc in (router, *workers):
            proc.stop()


def test_a_hung_worker_has_its_job_sent_elsewhere_and_cancels_it_later(tmp_path: Path) -> None:
    """SIGSTOP: the process keeps its sockets (the kernel still accepts connections) but
    answers nothing, like a frozen VM or a cut-off node."""
    workers = [start_worker(tmp_path, f"worker-{i}") for i in range(2)]
    router = start_router(tmp_path, [w.url for w in workers])
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                generate, router.url, NO_HANG, seed=3, size="256x256", num_inference_steps=40
            )
            wait_until(lambda: busy(workers) is not None, 10, "a worker to start the job")
            hung = busy(workers)
            assert hung is not None
            hung.service.signal(signal.SIGSTOP)
            answer = future.result()
        # The router noticed the silence (its load polls failed) and gave the job to the
        # other worker, long before TASK_TIMEOUT.
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"]) == 1
        other = next(w for w in workers if w is not hung)
        assert other.metric("qwen_image_worker_images_generated_total") == 1
        assert ready_count(router) == 1
        assert requests_total(router, "200", "ok") == 1

        hung.service.signal(signal.SIGCONT)
        # Back, it finds its caller gone and stops the job: nobody computes for nobody.
        wait_until(
            lambda: hung.metric("qwen_image_worker_job_failures_total", reason="cancelled") == 1,
            10,
            "the resumed worker to cancel the abandoned job",
        )
        assert hung.metric("qwen_image_worker_images_generated_total") == 0
        wait_until(lambda: ready_count(router) == 2, 5, "the router to use it again")
    finally:
        for worker in workers:
            worker.service.signal(signal.SIGCONT)
        for proc in (router, *workers):
            proc.stop()


def test_with_its_only_worker_hung_a_request_ends_in_a_spec_error(tmp_path: Path) -> None:
    worker = start_worker(tmp_path)
    router = start_router(tmp_path, [worker.url])
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(generate, router.url, NO_HANG, num_inference_steps=40)
            wait_until(lambda: busy([worker]) is not None, 10, "the job to start")
            worker.service.signal(signal.SIGSTOP)
            answer = future.result()
        assert spec_error(answer) == "Task queue is full"
        assert answer.headers["retry-after"]
        # New requests get the same answer at once while no worker is ready.
        assert spec_error(generate(router.url, NO_HANG)) == "Task queue is full"
        assert router.metric("qwen_image_router_queue_full_total") == 2
        assert requests_total(router, "500", "queue_full") == 2
        assert router.metric("qwen_image_router_ready_workers") == 0
    finally:
        worker.service.signal(signal.SIGCONT)
        router.stop()
        worker.stop()


def test_a_worker_drained_by_sigterm_under_load_finishes_its_jobs(tmp_path: Path) -> None:
    workers = [start_worker(tmp_path, f"worker-{i}", TASK_QUEUE_SIZE="8") for i in range(2)]
    router = start_router(tmp_path, [w.url for w in workers])
    drained = workers[0]
    try:
        with ThreadPoolExecutor(8) as pool:
            first = [
                pool.submit(
                    generate, router.url, NO_HANG, seed=i, num_inference_steps=10, size="256x256"
                )
                for i in range(4)
            ]
            # Jobs that reach it together run as one batch: one or more are running.
            wait_until(lambda: drained.load()["running"] >= 1, 10, "a job on the drained worker")
            drained.service.signal(signal.SIGTERM)
            later = [
                pool.submit(
                    generate,
                    router.url,
                    NO_HANG,
                    seed=10 + i,
                    num_inference_steps=10,
                    size="256x256",
                )
                for i in range(4)
            ]
            answers = [future.result() for future in first + later]
        assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers]
        assert drained.service.wait(timeout=30) == 0
        done_on_drained = drained.service.log().count(" done: ")
        assert done_on_drained >= 1  # it finished what it had accepted
        survivor = workers[1]
        assert survivor.metric("qwen_image_worker_images_generated_total") == 8 - done_on_drained
        assert requests_total(router, "200", "ok") == 8
        wait_until(lambda: ready_count(router) == 1, 5, "the router to drop the drained worker")
    finally:
        for proc in (router, *workers):
            proc.stop()


def test_a_worker_slow_to_become_ready_gets_no_job_until_it_is(tmp_path: Path) -> None:
    # The warm-up image takes 50 steps of 0.2 s: the worker lives but is not ready for 10 s.
    slow = start_worker(
        tmp_path, "slow", ready=False, WARMUP_STEPS="50", SIMULATED_STEP_SECONDS="0.2"
    )
    router = start_router(tmp_path, [slow.url], ready_workers=0)
    try:
        assert httpx.get(slow.url + "/readyz").status_code == 503
        assert httpx.get(router.url + "/healthz").status_code == 200
        assert httpx.get(router.url + "/readyz").status_code == 503
        refused = generate(router.url, NO_HANG)
        assert spec_error(refused) == "Task queue is full"
        assert refused.headers["retry-after"] and refused.headers["x-should-retry"] == "true"
        metrics = router.metrics()
        assert metric_value(metrics, "qwen_image_router_queue_full_total") == 1
        assert metric_value(metrics, "qwen_image_router_ready_workers") == 0
        assert slow.load() == {
            "model": "Qwen-Image",
            "task": "generate",
            "max_pictures": 0,
            "ready": False,
            "running": 0,
            "waiting": 0,
            "capacity": 5,
        }

        wait_until(lambda: ready_count(router) == 1, 30, "the slow worker to become ready")
        assert httpx.get(router.url + "/readyz").status_code == 200
        answer = generate(router.url, NO_HANG, num_inference_steps=2, size="256x256")
        assert answer.status_code == 200, answer.text
        assert slow.metric("qwen_image_worker_images_generated_total") == 1
    finally:
        router.stop()
        slow.stop()
