"""Security checks on a real router process: API keys, secrets, and size limits.

/images serving only what the router wrote is in test_bad_input.py. That the chart keeps
the workers' internal API away from everything but the routers (NetworkPolicy) is
tests/chart/test_chart_contracts.py::test_only_routers_and_scrapers_reach_workers.
"""

from __future__ import annotations

import ast
import hmac
import inspect
import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from faults.fault_stack import GENERATE, Proc, serve_in_thread, start_router, start_worker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qwen_image_common.contract import LOAD_PATH
from qwen_image_router.api import auth
from qwen_image_router.app import MAX_HEADER_BYTES
from support.processes import free_port

KEYS = ("key-one-7f3a9c2e55d14b", "key-two-0b8e41d6a2c97f")
REWRITE_SECRET = "sk-rewrite-secret-91c4e7a0d2"
PROMPT = "a secret prompt about a lighthouse 8d41"


class RejectingChatApi:
    """Answers every chat call 401 and echoes the presented key, as OpenAI's API does
    ("Incorrect API key provided: ..."), so a router that logged error messages would leak."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._reject, methods=["POST"])])

    async def _reject(self, request: Request) -> Response:
        presented = request.headers.get("authorization", "")
        self.authorizations.append(presented)
        message = f"Incorrect API key provided: {presented.removeprefix('Bearer ')}"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, 401)


@pytest.fixture(scope="module")
def chat_api() -> Iterator[tuple[RejectingChatApi, str]]:
    api = RejectingChatApi()
    with serve_in_thread(api.app) as url:
        yield api, url


@pytest.fixture(scope="module")
def keyed_router(
    tmp_path_factory: pytest.TempPathFactory, chat_api: tuple[RejectingChatApi, str]
) -> Iterator[Proc]:
    """Keys set, the rewrite on with a secret, and DEBUG logs: the most a log could leak."""
    folder = tmp_path_factory.mktemp("security")
    worker = start_worker(folder, SIMULATED_STEP_SECONDS="0")
    router = start_router(
        folder,
        [worker.url],
        API_KEYS=",".join(KEYS),
        ENABLE_PROMPT_REWRITE="true",
        OPENAI_BASE_URL=chat_api[1] + "/v1",
        OPENAI_MODEL="rewriter",
        OPENAI_API_KEY=REWRITE_SECRET,
        LOG_LEVEL="DEBUG",
        METRICS_PORT=str(free_port()),
        ENABLE_API_DOCS="false",
    )
    yield router
    router.stop()
    worker.stop()


def generate(router: Proc, authorization: str | None, **body: object) -> httpx.Response:
    headers = {} if authorization is None else {"authorization": authorization}
    body = {"prompt": PROMPT, "num_inference_steps": 1, "size": "256x256", **body}
    return httpx.post(router.url + GENERATE, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Basic {KEYS[0]}",
        KEYS[0],
        f"Bearer {KEYS[0][:-1]}",
        f"Bearer {KEYS[0]}x",
        f"Bearer {KEYS[0].upper()}",
        f"Bearer {KEYS[0]},{KEYS[1]}",
        f"Bearer {REWRITE_SECRET}",
    ],
)
def test_requests_without_a_valid_key_get_401_that_echoes_nothing(
    keyed_router: Proc, authorization: str | None
) -> None:
    for answer in (
        generate(keyed_router, authorization),
        httpx.get(keyed_router.url + "/v1/models", headers={"authorization": authorization or ""}),
    ):
        assert answer.status_code == 401
        assert answer.json() == {"detail": "Invalid or missing API key"}
        assert answer.headers["www-authenticate"] == "Bearer"


def test_keys_secrets_and_prompts_stay_out_of_logs_metrics_and_errors(
    keyed_router: Proc, chat_api: tuple[RejectingChatApi, str]
) -> None:
    api, _ = chat_api
    answers = [generate(keyed_router, f"Bearer {key}") for key in KEYS]
    assert [a.status_code for a in answers] == [200, 200]  # the rewrite failed: original prompt
    assert all("revised_prompt" not in a.json()["data"][0] for a in answers)
    # The secret did go out, to the chat API only.
    assert f"Bearer {REWRITE_SECRET}" in api.authorizations
    errors = [
        generate(keyed_router, f"Bearer {KEYS[0]}", n=9),
        generate(keyed_router, f"Bearer {KEYS[0]}", model="other"),
        generate(keyed_router, f"Bearer {KEYS[1]}x"),
        httpx.get(keyed_router.url + "/images/" + KEYS[0]),
    ]
    assert [e.status_code for e in errors] == [400, 400, 401, 404]
    exposed = {
        "log": keyed_router.service.log(),
        "metrics": keyed_router.metrics(),
        "errors": json.dumps([e.text for e in errors] + [dict(e.headers) for e in errors]),
    }
    assert "prompt rewrite failed (AuthenticationError 401)" in exposed["log"]
    for where, text in exposed.items():
        for secret in (*KEYS, REWRITE_SECRET, REWRITE_SECRET[-10:]):
            assert secret not in text, f"{secret!r} appears in the {where}"
    for line in exposed["log"].splitlines():  # the prompt: at DEBUG at most, never above
        assert PROMPT not in line or " DEBUG " in line, line


def test_keys_are_compared_in_constant_time_every_one_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    keys = [key.encode() for key in KEYS]
    for header in (f"Bearer {KEYS[0]}", f"Bearer {KEYS[1]}", "Bearer nope"):
        compared.clear()
        auth.key_matches(header, keys)
        # Every key, even after a match: the time does not tell which key, or whether one.
        assert [b for _, b in compared] == keys
    # And no other comparison of the presented key anywhere in the function.
    tree = ast.parse(textwrap.dedent(inspect.getsource(auth.key_matches)))
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    assert all("presented" not in ast.unparse(node) for node in compares)


def raw_request(router: Proc, head: bytes) -> bytes:
    """What the router answers to `head`, sent as is; b"" if it reset the connection."""
    host, port = urlsplit(router.url).netloc.split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(head)
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # it stopped reading and closed: refused, as a 400 is
    return answer


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * (4 * MAX_HEADER_BYTES) + b"\r\n",
        b"".join(b"X-%d: a\r\n" % i for i in range(MAX_HEADER_BYTES // 4)),
    ],
    ids=["one-huge-header", "many-headers"],
)
def test_headers_past_the_limit_are_refused_and_the_router_keeps_serving(
    keyed_router: Proc, headers: bytes
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: router\r\n" + headers + b"\r\n"
    answer = raw_request(keyed_router, head)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    normal = b"GET /healthz HTTP/1.1\r\nHost: router\r\nConnection: close\r\n\r\n"
    assert raw_request(keyed_router, normal).startswith(b"HTTP/1.1 200 ")


def test_an_oversized_body_is_refused_before_the_key_is_needed_or_read(keyed_router: Proc) -> None:
    big = b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    unkeyed = httpx.post(keyed_router.url + GENERATE, content=big)
    assert unkeyed.status_code == 401  # the key is checked first, the body never read
    keyed = httpx.post(
        keyed_router.url + GENERATE,
        content=big,
        headers={"authorization": f"Bearer {KEYS[0]}", "content-type": "application/json"},
    )
    assert keyed.status_code == 413
    assert keyed.json()["detail"].startswith("Request body too large")


def test_probes_need_no_key_and_metrics_and_docs_are_off_the_public_port(
    keyed_router: Proc,
) -> None:
    """What an ingress in front of PORT exposes: the probes, never the metrics (they name
    the workers) or the API's own documents."""
    for path in ("/healthz", "/readyz"):
        answer = httpx.get(keyed_router.url + path)
        assert answer.status_code == 200, path
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert httpx.get(keyed_router.url + path).status_code == 404, path
    assert keyed_router.metrics_url is not None
    scraped = httpx.get(keyed_router.metrics_url)
    assert scraped.status_code == 200
    assert "qwen_image_router_ready_workers 1.0" in scraped.text
    for secret in (*KEYS, REWRITE_SECRET):
        assert secret not in scraped.text
    # The metrics port serves metrics only: no API, no image files.
    base = keyed_router.metrics_url.removesuffix("/metrics")
    for path in ("/v1/models", "/healthz", "/openapi.json"):
        assert httpx.get(base + path).status_code == 404, path


def test_a_worker_serves_metrics_on_a_port_of_their_own(tmp_path: Path) -> None:
    """What the chart's NetworkPolicy relies on: scrapers get METRICS_PORT, on which no job
    API answers; the API port stays the routers' alone."""
    metrics_port = free_port()
    worker = start_worker(tmp_path, METRICS_PORT=str(metrics_port))
    try:
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert "qwen_image_worker_ready 1.0" in scraped.text
        # The same metrics text for any path: there is no load or job endpoint on it.
        load = httpx.get(f"http://127.0.0.1:{metrics_port}{LOAD_PATH}", timeout=5)
        assert "qwen_image_worker_ready" in load.text and '"capacity"' not in load.text
        assert httpx.get(worker.url + LOAD_PATH, timeout=5).json()["ready"] is True
    finally:
        worker.stop()
