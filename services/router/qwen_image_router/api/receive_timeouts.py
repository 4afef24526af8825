"""Bounds on how long a client may take to send a request, as nginx's client_header_timeout
and client_body_timeout bound them.

uvicorn bounds only the idle time between two requests of a connection (its keep-alive
timeout): a connection that never sends anything, one whose headers never end, or a body
that stops arriving would each be kept for ever. This is uvicorn's h11 protocol (the class
`uvicorn.Config(http=...)` takes) with a deadline per phase: the headers must be complete
within the header timeout of the connection opening or of the request's first byte, and
the body within the body timeout of the headers. Past it the connection is closed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_HEADERS = "headers"
_BODY = "body"


class _ReceiveTimeoutProtocol(H11Protocol):
    header_timeout_seconds: float
    body_timeout_seconds: float

    _phase: str | None = None
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter(_HEADERS)  # a connection that sends nothing is closed as well

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start on a pipelined request
        self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)

    def _follow_request(self) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._enter(_BODY)
        elif state is h11.IDLE and (self._phase == _HEADERS or self.conn.trailing_data[0]):
            self._enter(_HEADERS)  # a request has begun; idle gaps are the keep-alive's
        else:
            self._enter(None)

    def _enter(self, phase: str | None) -> None:
        if phase == self._phase:
            return
        self._phase = phase
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if phase is not None:
            seconds = (
                self.header_timeout_seconds if phase == _HEADERS else self.body_timeout_seconds
            )
            self._deadline = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection whose request %s did not arrive", self._phase)
            self.transport.close()


def receive_timeout_protocol(
    header_timeout_seconds: float, body_timeout_seconds: float
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with these bounds, for `uvicorn.Config(http=...)`."""

    class ReceiveTimeoutProtocol(_ReceiveTimeoutProtocol):
        pass

    ReceiveTimeoutProtocol.header_timeout_seconds = header_timeout_seconds
    ReceiveTimeoutProtocol.body_timeout_seconds = body_timeout_seconds
    return ReceiveTimeoutProtocol
