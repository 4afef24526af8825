"""Records each answer to the image routes (generations, edits) once, whichever part gave
it: the route, an error handler, or a middleware that refused the request before the app ran.

What the inner parts know goes in the request's state: `answer_started` (the route's
clock reading once the request is valid; only those answers are timed) and
`answer_reason` (an error handler's name for the answer).
"""

from __future__ import annotations

import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_router.errors import Unauthorized
from qwen_image_router.metrics import RouterMetrics

# Answers given before a handler could name a reason.
_REASON_BY_STATUS = {200: "ok", 401: Unauthorized.reason, 413: "too_large"}


class RequestMetricsMiddleware:
    """Outermost of the router's middlewares, so it sees every answer of `paths`."""

    def __init__(self, app: ASGIApp, metrics: RouterMetrics, paths: Collection[str]) -> None:
        self.app = app
        self._metrics = metrics
        self._paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        state: dict[str, object] = scope.setdefault("state", {})
        status = 500

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        except Exception:
            # Starlette's outermost handler answers it with a 500 after this.
            status, state["answer_reason"] = 500, "internal"
            raise
        finally:
            reason = state.get("answer_reason") or _REASON_BY_STATUS.get(status, "http_error")
            started = state.get("answer_started")
            duration = None if not isinstance(started, float) else time.monotonic() - started
            self._metrics.record_request(status, str(reason), duration)
