"""The worker's typed errors and the one handler that renders the spec's {"detail": ...} shape."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from qwen_image_common import contract
from qwen_image_common.requests import describe_validation_errors


class WorkerError(Exception):
    status_code = 500
    reason = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadJob(WorkerError):
    """A job this worker's model cannot run (pictures for a generator, none for an editor)."""

    status_code = 400
    reason = "bad_job"

    def __init__(self, problem: str) -> None:
        super().__init__(f"Validation error: {problem}")


class QueueFull(WorkerError):
    status_code = contract.STATUS_QUEUE_FULL
    reason = "queue_full"

    def __init__(self) -> None:
        super().__init__("Task queue is full")


class NotReady(WorkerError):
    status_code = contract.STATUS_NOT_READY
    reason = "not_ready"


class TaskTimeout(WorkerError):
    status_code = contract.STATUS_TIMEOUT
    reason = "timeout"

    def __init__(self) -> None:
        super().__init__("Task timeout")


class JobCancelled(WorkerError):
    """The caller went away; nobody reads the answer, it is only logged and counted."""

    status_code = 499
    reason = "cancelled"

    def __init__(self) -> None:
        super().__init__("Job cancelled: the caller went away")


class InferenceFailed(WorkerError):
    status_code = contract.STATUS_INFERENCE_FAILED
    reason = "inference_failed"

    def __init__(self, why: str) -> None:
        super().__init__(f"Inference failed: {why}")


def install_error_handlers(app: FastAPI) -> None:
    async def on_worker_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, WorkerError)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = describe_validation_errors(exc.errors())
        return JSONResponse({"detail": f"Validation error: {problems}"}, status_code=400)

    app.add_exception_handler(WorkerError, on_worker_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
