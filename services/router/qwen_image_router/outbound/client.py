"""Sends one job to one worker and turns its answer into a result, a refusal or an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import Enum
from typing import Literal, TypeVar

import httpx
from pydantic import ValidationError

from qwen_image_common.contract import (
    JOB_EVENT,
    JOBS_PATH,
    STATUS_INFERENCE_FAILED,
    STATUS_NOT_READY,
    STATUS_QUEUE_FULL,
    STATUS_TIMEOUT,
    JobCompleted,
    JobRequest,
    JobResult,
    PartialImage,
)
from qwen_image_router.errors import InferenceFailed, TaskTimeout
from qwen_image_router.registry import WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
            response = await self._send(worker, job, stream=False)
        finally:
            worker.in_flight -= 1
        if isinstance(response, Refused):
            return response
        return self._judge(worker, job, response)

    async def open_stream(self, worker: WorkerState, job: JobRequest) -> JobStream | Refused:
        """A streamed job: the worker's open event stream once it took the job. Raises as
        `run_job` for answers other than 200. The caller closes the stream; closing it
        early cancels the job."""
        worker.in_flight += 1
        response = await self._send(worker, job, stream=True)
        if isinstance(response, Refused):
            worker.in_flight -= 1
            return response
        if response.status_code == 200:
            return JobStream(worker, job, response, self)
        worker.in_flight -= 1
        try:
            await response.aread()
        except httpx.TransportError:
            self._registry.record_unreachable(worker.name, self._block_seconds)
            return Refused("unreachable")
        finally:
            await response.aclose()
        judged = self._judge(worker, job, response)
        assert isinstance(judged, Refused)
        return judged

    def block_faulty(self, worker: WorkerState, job: JobRequest, why: str) -> InferenceFailed:
        """Not the job's fault: the worker (or whatever answers in its place) is broken."""
        logger.warning(
            "job %s: %s; worker %s gets no jobs for %.1f s",
            job.job_id,
            why,
            worker.name,
            self._block_seconds,
        )
        self._registry.record_faulty(worker.name, self._block_seconds)
        return InferenceFailed(why)

    async def _send(
        self, worker: WorkerState, job: JobRequest, stream: bool
    ) -> httpx.Response | Refused:
        try:
            response = await self._post_unless_silent(worker, job, stream)
        except httpx.TransportError as exc:
            logger.warning(
                "job %s: worker %s unreachable (%s)", job.job_id, worker.name, type(exc).__name__
            )
            self._registry.record_unreachable(worker.name, self._block_seconds)
            return Refused("unreachable")
        if response is None:
            logger.warning(
                "job %s: worker %s stopped answering; job given up", job.job_id, worker.name
            )
            return Refused("unreachable")
        return response

    def _judge(
        self, worker: WorkerState, job: JobRequest, response: httpx.Response
    ) -> JobResult | Refused:
        try:
            return self._interpret(worker, job, response)
        except _Nonsense as nonsense:
            raise self.block_faulty(worker, job, str(nonsense)) from None

    async def _post_unless_silent(
        self, worker: WorkerState, job: JobRequest, stream: bool
    ) -> httpx.Response | None:
        """The worker's answer, or None once its load polls say it stopped answering: a
        hung worker's connection stays open, and waiting on it would last till TASK_TIMEOUT.
        Either way the request is closed before this returns or raises, unless `stream`
        asked for an open body."""
        request = self._http.build_request(
            "POST", worker.endpoint.url + JOBS_PATH, json=job.model_dump(mode="json")
        )
        answer = await _unless_silent(worker, self._http.send(request, stream=stream))
        return None if answer is _Silent.SILENT else answer

    def _interpret(
        self, worker: WorkerState, job: JobRequest, response: httpx.Response
    ) -> JobResult | Refused:
        status = response.status_code
        if status == 200:
            return parse_result(job, response.content)
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


class JobStream:
    """A streamed job's open answer from one worker: its events in order, checked against
    the job contract. Close it (`aclose`) in every case; closing it early cancels the job."""

    def __init__(
        self, worker: WorkerState, job: JobRequest, response: httpx.Response, client: WorkerClient
    ) -> None:
        self.worker = worker
        self._job = job
        self._response = response
        self._client = client
        self._lines = response.aiter_lines()
        self._open = True

    async def next_event(self) -> PartialImage | JobResult:
        """The next preview, or the result, which is the last event. Raises TaskTimeout or
        InferenceFailed as `run_job` does, and InferenceFailed when the worker breaks off."""
        try:
            line = await self._next_line_unless_silent()
        except httpx.TransportError as exc:
            why = f"the worker broke off the job ({type(exc).__name__})"
            raise self._client.block_faulty(self.worker, self._job, why) from None
        if line is None:
            raise self._client.block_faulty(self.worker, self._job, "the job's stream ended early")
        try:
            event = JOB_EVENT.validate_json(line)
        except ValidationError:
            raise self._client.block_faulty(
                self.worker, self._job, "the worker sent an unreadable event"
            ) from None
        if isinstance(event, PartialImage):
            if event.image_index >= len(self._job.seeds):
                raise self._client.block_faulty(
                    self.worker, self._job, "the worker sent a preview of no image of the job"
                )
            return event
        if isinstance(event, JobCompleted):
            try:
                return parse_result(self._job, event.result)
            except _Nonsense as nonsense:
                raise self._client.block_faulty(self.worker, self._job, str(nonsense)) from None
        if event.status == STATUS_TIMEOUT:
            raise TaskTimeout()
        if event.status == STATUS_INFERENCE_FAILED:
            raise InferenceFailed(event.detail)
        raise self._client.block_faulty(
            self.worker, self._job, f"worker ended the job with {event.status}: {event.detail}"
        )

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self.worker.in_flight -= 1
            await self._response.aclose()

    async def _next_line_unless_silent(self) -> str | None:
        """The next non-empty line; None at the end of the body or once the worker's load
        polls say it stopped answering."""
        while True:
            line = await _unless_silent(self.worker, anext(self._lines, None))
            if line is _Silent.SILENT:
                logger.warning(
                    "job %s: worker %s stopped answering", self._job.job_id, self.worker.name
                )
                return None
            if line is None or line.strip():
                return line


class _Silent(Enum):
    """A worker gone silent: told apart from every answer a read may give, None included."""

    SILENT = "silent"


async def _unless_silent(worker: WorkerState, work: Awaitable[T]) -> T | _Silent:
    """`work`'s result, or SILENT (`work` cancelled) once the worker's load polls say it
    stopped answering: a hung worker's connection stays open, so a read would wait forever."""
    task = asyncio.ensure_future(work)
    silent = asyncio.ensure_future(worker.silent.wait())
    try:
        await asyncio.wait({task, silent}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        silent.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    return _Silent.SILENT if task.cancelled() else task.result()


def parse_result(job: JobRequest, content: bytes | JobResult) -> JobResult:
    """The worker's result for `job`, checked; raises _Nonsense."""
    try:
        result = (
            content if isinstance(content, JobResult) else JobResult.model_validate_json(content)
        )
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
