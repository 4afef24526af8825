"""Clients that open a connection and never finish their request, against a real router.

With REQUEST_HEADER_TIMEOUT_SECONDS and REQUEST_BODY_TIMEOUT_SECONDS at one second, each
such connection must be closed by the router (the socket reads end-of-file) well within
the socket's own timeout; a router that kept it would fail the read with a timeout.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from faults.fault_stack import GENERATE, Proc, start_router, start_worker

# Far above the one-second bounds: reached only by a router that keeps the connection.
NO_HANG = 20.0


@pytest.fixture(scope="module")
def strict_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    folder = tmp_path_factory.mktemp("slow-clients")
    worker = start_worker(folder, SIMULATED_STEP_SECONDS="0")
    router = start_router(
        folder,
        [worker.url],
        REQUEST_HEADER_TIMEOUT_SECONDS="1",
        REQUEST_BODY_TIMEOUT_SECONDS="1",
    )
    yield router
    router.stop()
    worker.stop()


def connect(router: Proc) -> socket.socket:
    host, port = urlsplit(router.url).netloc.split(":")
    return socket.create_connection((host, int(port)), timeout=NO_HANG)


def closed_by_router(sock: socket.socket) -> bool:
    """True once the router closed the connection; raises TimeoutError if it never does."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


HEAD = b"POST " + GENERATE.encode() + b" HTTP/1.1\r\nHost: router\r\n"


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        HEAD,
        HEAD + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"prompt": ',
        HEAD + b'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"pro',
    ],
    ids=["nothing", "headers-unfinished", "body-short-of-its-length", "chunked-unfinished"],
)
def test_a_request_that_never_arrives_is_closed(strict_router: Proc, sent: bytes) -> None:
    with connect(strict_router) as sock:
        sock.sendall(sent)
        assert closed_by_router(sock)


def test_headers_sent_a_byte_at_a_time_are_closed_within_the_bound(strict_router: Proc) -> None:
    """Each byte arrives well within any per-read timeout; the bound is on the whole head."""
    trickle = HEAD + b"X-Slow: " + b"a" * 400
    with connect(strict_router) as sock:
        try:
            for byte in trickle:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed while we were still sending
        raise AssertionError("the router took 400 header bytes over 20 s")


def test_prompt_clients_are_served_on_a_connection_kept_alive(strict_router: Proc) -> None:
    body = {"prompt": "x", "num_inference_steps": 1, "size": "256x256"}
    connection = http.client.HTTPConnection(urlsplit(strict_router.url).netloc, timeout=NO_HANG)
    try:
        for _ in range(3):
            connection.request(
                "POST", GENERATE, json.dumps(body), {"content-type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200, response.read()[:200]
            response.read()
            time.sleep(0.5)  # idle between requests: the keep-alive's business, not the bound
    finally:
        connection.close()
