"""MAX_REQUEST_BODY_BYTES: bodies over it get 413 in the spec's error shape, unread.

A declared Content-Length over the limit is answered before the app runs; a chunked body
is counted as it arrives and stopped at the limit, so no request can fill memory. Either
way the connection is closed after the 413: the rest of the body is never read.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_router.errors import JSONAnswer


def too_large_detail(limit: int) -> str:
    return f"Request body too large: the limit is {limit} bytes"


class BodyTooLarge(HTTPException):
    """Raised from `receive`; FastAPI passes HTTPExceptions through to the error handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_detail(limit))


class BodyLimitMiddleware:
    """`limit` for every path but those in `path_limits` (an edit's uploads are larger)."""

    def __init__(
        self, app: ASGIApp, limit: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self._path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._path_limits.get(scope["path"], self.limit)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(scope, receive, send, limit)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = JSONAnswer(
            {"detail": too_large_detail(limit)},
            status_code=413,
            headers={"x-should-retry": "false", "connection": "close"},
        )
        await response(scope, receive, send)
