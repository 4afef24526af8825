"""The router's errors, one type per answer of the spec, and the handlers that render them.

Every error leaves as `{"detail": "..."}`. `x-should-retry` tells the openai SDK (which
retries 5xx by itself) whether a retry can help: only a full queue can clear by waiting.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwen_image_common.contract import ErrorBody
from qwen_image_common.requests import NOT_JSON, describe_validation_errors

# Seconds a client should wait after `Task queue is full`: long enough for a worker's
# queue to move a little, short enough that the SDK's own retries still help.
RETRY_AFTER_SECONDS = 2


class JSONAnswer(JSONResponse):
    """JSON with everything past ASCII escaped: any string JSON can carry renders, a lone
    surrogate echoed from a request included, where UTF-8 encoding would fail."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


class RouterError(Exception):
    """An answer of the spec; `reason` labels it in metrics and logs."""

    status_code = 500
    reason = "internal"
    should_retry = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "true" if self.should_retry else "false"}


class ValidationFailed(RouterError):
    status_code = 400
    reason = "validation"

    def __init__(self, what: str) -> None:
        super().__init__(f"Validation error: {what}")


class ModelNotAvailable(RouterError):
    status_code = 400
    reason = "model_not_available"

    def __init__(self, requested: str) -> None:
        super().__init__(f"Model not available: {requested}")


class Unauthorized(RouterError):
    status_code = 401
    reason = "unauthorized"

    def __init__(self) -> None:
        super().__init__("Invalid or missing API key")

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "www-authenticate": "Bearer"}


class QueueFull(RouterError):
    """No ready worker has room: answered at once, never queued in the router."""

    reason = "queue_full"
    should_retry = True

    def __init__(self) -> None:
        super().__init__("Task queue is full")

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "retry-after": str(RETRY_AFTER_SECONDS)}


class TaskTimeout(RouterError):
    """TASK_TIMEOUT passed; a retry would wait as long again, so the SDK is told not to."""

    reason = "timeout"

    def __init__(self) -> None:
        super().__init__("Task timeout")


class InferenceFailed(RouterError):
    reason = "inference_failed"

    def __init__(self, why: str) -> None:
        prefix = "Inference failed: "
        super().__init__(why if why.startswith(prefix) else prefix + why)


class StorageFailed(RouterError):
    """The images were made but could not be stored for the url format (e.g. disk full)."""

    reason = "storage_failed"

    def __init__(self) -> None:
        super().__init__("Image storage failed")


class ClientClosedRequest(RouterError):
    """The client went away; the answer is for logs and metrics only (nginx's 499)."""

    status_code = 499
    reason = "client_closed"

    def __init__(self) -> None:
        super().__init__("Client closed request")


def error_response(error: RouterError) -> JSONAnswer:
    return JSONAnswer(
        {"detail": error.detail}, status_code=error.status_code, headers=error.headers()
    )


def error_doc(description: str) -> dict[str, Any]:
    """An error answer of a route, for its `responses`: the spec's shape."""
    return {"model": ErrorBody, "description": description}


def _document_errors(app: FastAPI) -> None:
    """The OpenAPI document shows the answers the router gives: FastAPI lists a 422 for
    every route with parameters, but bad input gets the spec's 400 {"detail": ...}."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            for path in schema["paths"].values():
                for operation in path.values():
                    responses = operation["responses"]
                    if responses.pop("422", None) is not None:
                        responses.setdefault(
                            "400",
                            {
                                "description": "Validation error",
                                "content": {
                                    "application/json": {
                                        "schema": {"$ref": "#/components/schemas/ErrorBody"}
                                    }
                                },
                            },
                        )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Render every error in the spec's shape, and document them so; no 422 ever leaves
    the router. Each answer names its reason for the request's metrics."""
    _document_errors(app)

    async def on_router_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RouterError)
        request.state.answer_reason = exc.reason
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return await on_router_error(
            request, ValidationFailed(describe_validation_errors(exc.errors()))
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's answer to a body its JSON parser gave up on (nested too deep, an
            # integer too long, bytes that are no text): bad JSON, as the spec words it.
            return await on_router_error(request, ValidationFailed(NOT_JSON))
        headers = dict(exc.headers or {})
        if exc.status_code == 413:
            # The rest of the body is not read: closing is the only way to refuse it, or the
            # server would read it to its end to find the next request.
            headers.update({"x-should-retry": "false", "connection": "close"})
        return JSONAnswer({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the exception itself after this answer is sent.
        return JSONAnswer({"detail": "Internal server error"}, status_code=500)

    app.add_exception_handler(RouterError, on_router_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
