"""Optional API keys for /v1/*, checked before the body is read.

Health, readiness, metrics and image files stay open: probes, Prometheus and image links
carry no key. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from qwen_image_router.errors import Unauthorized, error_response

PROTECTED_PREFIX = "/v1"


def key_matches(header: str | None, keys: Sequence[bytes]) -> bool:
    """True if `header` is `Bearer <one of keys>`; every key is compared, in constant time."""
    if header is None:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    presented = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


class ApiKeyMiddleware:
    """Answers 401 `Invalid or missing API key` for /v1/* without a valid bearer key."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        protected = path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
        if not self._keys or not protected:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if key_matches(request.headers.get("authorization"), self._keys):
            await self.app(scope, receive, send)
            return
        await error_response(Unauthorized())(scope, receive, send)
