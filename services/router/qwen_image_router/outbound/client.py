"""Sends one job to one worker and turns its answer into a result, a refusal or an error."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import ValidationError

from qwen_image_common.contract import (
    JOBS_PATH,
    STATUS_INFERENCE_FAILED,
    STATUS_NOT_READY,
    STATUS_QUEUE_FULL,
    STATUS_TIMEOUT,
    JobRequest,
    JobResult,
)
from qwen_image_router.errors import InferenceFailed, TaskTimeout
from qwen_image_router.registry import WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    """The worker did not take the job; another worker may.

    `unreachable` covers a connection that failed or dropped before an answer, and a worker
    gone silent: jobs are deterministic per seed, so sending the same job elsewhere is safe.
    """

    reason: Literal["full", "not_ready", "unreachable"]


class WorkerClient:
    """Runs jobs on workers over HTTP and records what it learns in the registry.

    Cancelling `run_job` (timeout, client gone) abandons the HTTP request, which closes its
    connection; the worker takes a closed connection as "cancel the job".
    """

    def __init__(self, http: httpx.AsyncClient, registry: WorkerRegistry, block_seconds: float):
        self._http = http
        self._registry = registry
        self._block_seconds = block_seconds

    async def run_job(self, worker: WorkerState, job: JobRequest) -> JobResult | Refused:
        """Raises TaskTimeout (worker 504) or InferenceFailed (worker 500 or nonsense)."""
        worker.in_flight += 1
        try:
            response = await self._post_unless_silent(worker, job)
        except httpx.TransportError as exc:
            logger.warning(
                "job %s: worker %s unreachable (%s)", job.job_id, worker.name, type(exc).__name__
            )
            self._registry.record_unreachable(worker.name, self._block_seconds)
            return Refused("unreachable")
        finally:
            worker.in_flight -= 1
        if response is None:
            logger.warning(
                "job %s: worker %s stopped answering; job given up", job.job_id, worker.name
            )
            return Refused("unreachable")
        try:
            return self._interpret(worker, job, response)
        except _Nonsense as nonsense:
            # Not the job's fault: the worker (or whatever answers in its place) is broken.
            logger.warning(
                "job %s: %s; worker %s gets no jobs for %.1f s",
                job.job_id,
                nonsense,
                worker.name,
                self._block_seconds,
            )
            self._registry.record_faulty(worker.name, self._block_seconds)
            raise InferenceFailed(str(nonsense)) from None

    async def _post_unless_silent(
        self, worker: WorkerState, job: JobRequest
    ) -> httpx.Response | None:
        """The worker's answer, or None once its load polls say it stopped answering: a
        hung worker's connection stays open, and waiting on it would last till TASK_TIMEOUT.
        Either way the request is closed before this returns or raises."""
        post = asyncio.create_task(
            self._http.post(worker.endpoint.url + JOBS_PATH, json=job.model_dump(mode="json"))
        )
        silent = asyncio.create_task(worker.silent.wait())
        try:
            await asyncio.wait({post, silent}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            silent.cancel()
            if not post.done():
                post.cancel()
                await asyncio.wait({post})
        return None if post.cancelled() else post.result()

    def _interpret(
        self, worker: WorkerState, job: JobRequest, response: httpx.Response
    ) -> JobResult | Refused:
        status = response.status_code
        if status == 200:
            return _parse_result(job, response)
        if status in (STATUS_QUEUE_FULL, STATUS_NOT_READY):
            logger.info("job %s: worker %s refused it (%d)", job.job_id, worker.name, status)
            self._registry.record_full(worker.name, self._block_seconds)
            return Refused("full" if status == STATUS_QUEUE_FULL else "not_ready")
        detail = _detail(response)
        logger.warning("job %s: worker %s answered %d: %s", job.job_id, worker.name, status, detail)
        if status == STATUS_TIMEOUT:
            raise TaskTimeout()
        if status == STATUS_INFERENCE_FAILED:
            raise InferenceFailed(detail)
        raise _Nonsense(f"worker answered {status}: {detail}")


class _Nonsense(Exception):
    """An answer outside the job contract."""


def _parse_result(job: JobRequest, response: httpx.Response) -> JobResult:
    try:
        result = JobResult.model_validate_json(response.content)
    except ValidationError:
        raise _Nonsense("the worker sent an unreadable result") from None
    if [image.seed for image in result.images] != job.seeds:
        raise _Nonsense("the worker sent images for other seeds than asked")
    return result


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return response.text[:200] or response.reason_phrase
