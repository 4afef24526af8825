"""POST a job, wait for its images. A closed connection cancels the job."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from qwen_image_common.contract import JOBS_PATH, JobRequest, JobResult
from qwen_image_common.requests import wait_for_disconnect
from qwen_image_worker.api.deps import QueueDep
from qwen_image_worker.errors import JobCancelled, TaskTimeout

router = APIRouter()

# The job's own deadline stops it on the GPU thread; this margin only covers the hand-off.
_ANSWER_GRACE_SECONDS = 1.0


@router.post(JOBS_PATH)
async def run_job(body: JobRequest, request: Request, queue: QueueDep) -> JobResult:
    job = queue.submit(body)
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
