"""POST a job, wait for its images, or stream its previews and images. A closed connection
cancels the job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from qwen_image_common.contract import (
    EVENTS_MEDIA_TYPE,
    JOBS_PATH,
    JobCompleted,
    JobFailed,
    JobRequest,
    JobResult,
)
from qwen_image_common.requests import wait_for_disconnect
from qwen_image_worker.api.deps import QueueDep
from qwen_image_worker.errors import JobCancelled, TaskTimeout, WorkerError
from qwen_image_worker.queue import Job, JobQueue

logger = logging.getLogger(__name__)

router = APIRouter()

# The job's own deadline stops it on the GPU thread; this margin only covers the hand-off.
_ANSWER_GRACE_SECONDS = 1.0


@router.post(JOBS_PATH, response_model=None)
async def run_job(
    body: JobRequest, request: Request, queue: QueueDep
) -> JobResult | StreamingResponse:
    job = queue.submit(body)
    if body.stream:
        return StreamingResponse(_events(queue, job), media_type=EVENTS_MEDIA_TYPE)
    gone = asyncio.create_task(wait_for_disconnect(request))
    waiters: set[asyncio.Future[Any]] = {job.future, gone}
    try:
        done, _ = await asyncio.wait(
            waiters,
            timeout=body.timeout_seconds + _ANSWER_GRACE_SECONDS,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        gone.cancel()
    if job.future in done:
        return job.future.result()
    if gone in done:
        queue.cancel(job, JobCancelled())
        raise JobCancelled()
    queue.cancel(job, TaskTimeout())
    raise TaskTimeout()


async def _events(queue: JobQueue, job: Job) -> AsyncIterator[str]:
    """The job's previews as they come, then its result or its error, a JSON line each.

    The response's status is sent with the first line, so an error of the job is a line
    too. When the caller disconnects, Starlette cancels this generator where it waits;
    `finally` then cancels the job, which stops within one step."""
    assert job.previews is not None
    deadline = time.monotonic() + job.request.timeout_seconds + _ANSWER_GRACE_SECONDS
    try:
        while True:
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    preview = await job.previews.get()
                    if preview is None:
                        break
                    event = await preview
            except TimeoutError:
                queue.cancel(job, TaskTimeout())
                timeout = TaskTimeout()
                failed = JobFailed(status=timeout.status_code, detail=timeout.detail)
                yield failed.model_dump_json() + "\n"
                return
            except Exception:
                logger.exception("job %s: a preview failed; the stream goes on", job.request.job_id)
                continue
            yield event.model_dump_json() + "\n"
        try:
            result = job.future.result()
        except WorkerError as error:
            yield JobFailed(status=error.status_code, detail=error.detail).model_dump_json() + "\n"
            return
        yield JobCompleted(result=result).model_dump_json() + "\n"
    finally:
        if not job.future.done():
            queue.cancel(job, JobCancelled())
