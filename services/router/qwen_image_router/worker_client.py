"""Sends one job to one worker and turns its answer into a result, a refusal or an error."""

from __future__ import annotations

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

    `unreachable` covers a connection that failed or dropped before an answer: jobs are
    deterministic per seed, so sending the same job elsewhere is safe.
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
            response = await self._http.post(
                worker.endpoint.url + JOBS_PATH, json=job.model_dump(mode="json")
            )
        except httpx.TransportError as exc:
            logger.warning(
                "job %s: worker %s unreachable (%s)", job.job_id, worker.name, type(exc).__name__
            )
            self._registry.record_unreachable(worker.name, self._block_seconds)
            return Refused("unreachable")
        finally:
            worker.in_flight -= 1
        return self._interpret(worker, job, response)

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
        raise InferenceFailed(f"worker answered {status}: {detail}")


def _parse_result(job: JobRequest, response: httpx.Response) -> JobResult:
    try:
        result = JobResult.model_validate_json(response.content)
    except ValidationError:
        raise InferenceFailed("the worker sent an unreadable result") from None
    if [image.seed for image in result.images] != job.seeds:
        raise InferenceFailed("the worker sent images for other seeds than asked")
    return result


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return response.text[:200] or response.reason_phrase
