"""Request handling both services share: naming bad fields, noticing a caller that left."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request

NOT_JSON = "request body is not valid JSON"


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """Turn pydantic/FastAPI errors into one line that names each bad field."""
    parts: list[str] = []
    for error in errors:
        kind = error.get("type", "")
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if kind == "json_invalid":
            parts.append(NOT_JSON)
        elif not loc and kind == "missing":
            parts.append("request body is required")
        elif not loc and kind in ("model_attributes_type", "model_type", "dict_type"):
            parts.append("request body must be a JSON object (Content-Type: application/json)")
        else:
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            field = ".".join(loc) if loc else "request"
            parts.append(f"{field}: {message}")
    return "; ".join(parts) or "invalid request"


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client disconnects; the body must be read already, so the next ASGI
    message can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
