"""Hostile and odd input against a real router process over HTTP.

Huge prompts and bodies, deep or odd JSON, unicode, wrong content types, and path tricks
on /images: every answer is a 2xx or a 4xx in the spec's {"detail": ...} shape, never a
5xx, and the router keeps serving.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from faults.fault_stack import GENERATE, Proc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_image_common.contract import MAX_PROMPT_CHARS

BODY_LIMIT = 1024 * 1024  # MAX_REQUEST_BODY_BYTES's default
NOT_JSON = "Validation error: request body is not valid JSON"
NOT_OBJECT = "Validation error: request body must be a JSON object (Content-Type: application/json)"


def post(router: Proc, content: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return httpx.post(router.url + GENERATE, content=content, headers=headers, timeout=30)


def detail(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    return str(body["detail"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"prompt": "%s"}' % ("x" * (MAX_PROMPT_CHARS + 1)), "Validation error: prompt: "),
        (
            '{"prompt": "x", "negative_prompt": "%s"}' % ("y" * 9000),
            "Validation error: negative_prompt: ",
        ),
        ("[" * 100_000, NOT_JSON),
        ('{"prompt": ' + "[" * 50_000 + "]" * 50_000 + "}", NOT_JSON),
        ('{"prompt": "x", "n": 1' + "0" * 5000 + "}", NOT_JSON),
        ('{"prompt": "x", "seed": 1' + "0" * 30 + "}", "Validation error: seed: "),
        ('{"prompt": "x", "guidance_scale": NaN}', "Validation error: guidance_scale: "),
        ('{"prompt": "x", "guidance_scale": Infinity}', "Validation error: guidance_scale: "),
        ('{"prompt": "x", "guidance_scale": 1e999}', "Validation error: guidance_scale: "),
        ('{"prompt": "a\\ud800b"}', "Validation error: prompt: "),
        ('{"prompt": "x", "n": true}', "Validation error: n: "),
        ('{"prompt": "x", "n": "2"}', "Validation error: n: "),
        ('{"prompt": "x", "n": 2.0}', "Validation error: n: "),
        ('{"prompt": {"text": "x"}}', "Validation error: prompt: "),
        ('{"prompt": "x", "size": "1024x1024\\u0000"}', "Validation error: size: "),
        ('{"prompt": "x", "size": "../../etc"}', "Validation error: size: "),
        ('{"prompt": "x",}', NOT_JSON),
        ("", "Validation error: request body is required"),
        ("[]", NOT_OBJECT),
        ("null", NOT_OBJECT),
        ('"prompt"', NOT_OBJECT),
        ("12", NOT_OBJECT),
    ],
    ids=lambda value: str(value)[:24],
)
def test_bad_json_gets_a_400_naming_the_problem(
    fuzz_router: Proc, body: str, expected: str
) -> None:
    response = post(fuzz_router, body.encode("utf-8", "surrogatepass"))
    assert response.status_code == 400, response.text[:300]
    assert detail(response).startswith(expected), detail(response)[:300]


def test_undecodable_bytes_get_a_400(fuzz_router: Proc) -> None:
    response = post(fuzz_router, '{"prompt": "café"}'.encode("latin-1"))
    assert (response.status_code, detail(response)) == (400, NOT_JSON)


@pytest.mark.parametrize(
    "prompt",
    [
        "一只可爱的小猫坐在花园里 🐈‍⬛",
        "שלום עולם مرحبا",  # right-to-left scripts
        "e\u0301" * 500 + "\u200b\u200d\ufeff",  # combining marks, zero-width characters
        "nul \u0000 inside",
        "x" * MAX_PROMPT_CHARS,  # exactly the limit
    ],
    ids=["cjk-emoji", "rtl", "combining", "nul", "at-limit"],
)
def test_odd_but_valid_unicode_prompts_get_images(fuzz_router: Proc, prompt: str) -> None:
    body = {"prompt": prompt, "num_inference_steps": 1, "size": "256x256"}
    response = post(fuzz_router, json.dumps(body).encode())
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["data"]) == 1


def test_duplicate_keys_bom_and_unknown_fields_are_plain_json(fuzz_router: Proc) -> None:
    body = b'\xef\xbb\xbf{"prompt": "a", "prompt": "b", "quality": "hd", "num_inference_steps": 1}'
    assert post(fuzz_router, body).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/octet-stream",
        "",
    ],
)
def test_wrong_content_types_get_a_400(fuzz_router: Proc, content_type: str) -> None:
    response = post(fuzz_router, b'{"prompt": "x"}', **{"content-type": content_type})
    assert (response.status_code, detail(response)) == (400, NOT_OBJECT)


def test_a_body_over_the_limit_gets_413_declared_or_chunked(fuzz_router: Proc) -> None:
    big = b'{"prompt": "' + b"x" * BODY_LIMIT + b'"}'
    declared = post(fuzz_router, big)
    assert declared.status_code == 413
    assert detail(declared) == f"Request body too large: the limit is {BODY_LIMIT} bytes"

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(2 * BODY_LIMIT // 65536):
            yield b"x" * 65536

    chunked = post(fuzz_router, chunks())
    assert chunked.status_code == 413 and detail(chunked).startswith("Request body too large")
    assert httpx.get(fuzz_router.url + "/healthz").status_code == 200


@pytest.fixture
def planted(images_dir: Path) -> Iterator[dict[str, str]]:
    """Files in the images folder the router did not write: a temp file of an unfinished
    write, a link under an image's name, and a file of another name."""
    images_dir.mkdir(exist_ok=True)
    temp = f".{uuid.uuid4().hex}.png.part"
    link = f"{uuid.uuid4().hex}.png"
    (images_dir / temp).write_bytes(b"\x89PNG half")
    os.symlink("/etc/hostname", images_dir / link)
    (images_dir / "notes.txt").write_text("not an image")
    yield {"temp": temp, "link": link, "other": "notes.txt"}
    for name in (temp, link, "notes.txt"):
        (images_dir / name).unlink()


@pytest.mark.parametrize(
    "path",
    [
        "/images/../openapi.json",
        "/images/..%2Fopenapi.json",
        "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/images/..%5C..%5Cetc%5Cpasswd",
        "/images/%2Fetc%2Fhostname",
        "/images/%00.png",
        "/images/" + "A" * 32 + ".png",
        "/images/" + "a" * 10_000 + ".png",
        "/images/.",
        "/images/{temp}",
        "/images/{link}",
        "/images/{other}",
    ],
)
def test_images_serves_nothing_but_images_the_router_wrote(
    fuzz_router: Proc, planted: dict[str, str], path: str
) -> None:
    # http.client sends the path as written; httpx would resolve the dot segments first.
    connection = http.client.HTTPConnection(urlsplit(fuzz_router.url).netloc, timeout=10)
    try:
        connection.request("GET", path.format(**planted))
        response = connection.getresponse()
        status, content = response.status, response.read()
    finally:
        connection.close()
    assert status == 404, content[:200]
    body = json.loads(content)
    assert body in ({"detail": "Image not found"}, {"detail": "Not Found"}), body


def test_an_image_the_router_wrote_is_served_and_other_methods_are_refused(
    fuzz_router: Proc,
) -> None:
    body = {"prompt": "x", "num_inference_steps": 1, "size": "256x256", "response_format": "url"}
    url = post(fuzz_router, json.dumps(body).encode()).json()["data"][0]["url"]
    assert httpx.get(url).status_code == 200
    assert httpx.head(url).status_code == 200
    for method in ("PUT", "DELETE", "POST"):
        refused = httpx.request(method, url)
        assert refused.status_code == 405 and detail(refused) == "Method Not Allowed"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "model",
        "prompt",
        "n",
        "size",
        "response_format",
        "user",
        "negative_prompt",
        "seed",
        "guidance_scale",
        "num_inference_steps",
        "aspect_ratio",
        "stream",
        "output_format",
        "output_compression",
        "quality",
        "background",
        "partial_images",
    ]
)
GOOD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.text(min_size=1, max_size=60),
    "n": st.integers(0, 5),
    "size": st.sampled_from(["256x256", "512x512", "1024x1024", "64x64", ""]),
    "num_inference_steps": st.integers(0, 51),
    "guidance_scale": st.floats(2.5, 6.5),
    "aspect_ratio": st.sampled_from(["1:1", "16:9", "9:16", "4:3", "3:4", "2:1"]),
    "seed": st.integers(-1, 2**32),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif", "JPEG"]),
    "output_compression": st.integers(-1, 101),
    "quality": st.sampled_from(["auto", "low", "medium", "high", "standard", "hd", "ultra"]),
    "background": st.sampled_from(["auto", "opaque", "transparent"]),
    "partial_images": st.integers(-1, 4),
    "stream": st.booleans(),
}
BODIES = st.dictionaries(
    FIELDS | st.text(max_size=10), JSON_VALUES, max_size=8
) | st.fixed_dictionaries(
    {}, optional={name: values | JSON_VALUES for name, values in GOOD_VALUES.items()}
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
def test_any_json_object_gets_images_or_a_400(fuzz_router: Proc, body: dict[str, Any]) -> None:
    body = {"num_inference_steps": 1, **body} if "num_inference_steps" not in body else body
    response = post(fuzz_router, json.dumps(body).encode())
    assert response.status_code in (200, 400), (body, response.status_code, response.text[:300])
    if response.status_code == 400:
        message = detail(response)
        assert message.startswith(("Validation error: ", "Model not available: ")), message
    elif body.get("stream") is True:
        completed = response.text.count("event: image_generation.completed\n")
        assert response.headers["content-type"].startswith("text/event-stream")
        assert completed == (body.get("n") or 1), response.text[-300:]
    else:
        assert len(response.json()["data"]) == (body.get("n") or 1)


@pytest.mark.parametrize(
    "field",
    ["model", "user", "prompt", "negative_prompt", "size", "response_format", "aspect_ratio"],
)
def test_lone_surrogates_get_an_answer_and_the_connection_stays_healthy(
    fuzz_router: Proc, field: str
) -> None:
    """JSON can carry any UTF-16 code unit (`"\\ud800"`): echoed in an answer or logged, it
    must not turn into a 500 or a reset connection."""
    connection = http.client.HTTPConnection(urlsplit(fuzz_router.url).netloc, timeout=30)
    try:
        for value in ("\ud800", "a\udfffb", "\udc00\ud800"):
            body = {"prompt": "x", "num_inference_steps": 1, "size": "256x256", field: value}
            connection.request(
                "POST", GENERATE, json.dumps(body), {"content-type": "application/json"}
            )
            response = connection.getresponse()
            content = json.loads(response.read())
            assert response.status in (200, 400), (field, response.status, content)
            if response.status == 400:
                assert content == {"detail": content["detail"]}
                assert content["detail"].startswith(("Validation error: ", "Model not available"))
                assert response.headers["x-should-retry"] == "false"
            if field == "model":
                assert content["detail"] == f"Model not available: {value}"
        # The same connection serves the next request.
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert "Traceback" not in fuzz_router.service.log()


def test_an_endless_chunked_body_gets_413_and_the_connection_closed(fuzz_router: Proc) -> None:
    """Past the limit the router answers and closes; it never reads the rest to find the
    next request (an attacker's chunked body need not end)."""
    host, port = urlsplit(fuzz_router.url).netloc.split(":")
    head = (
        b"POST " + GENERATE.encode() + b" HTTP/1.1\r\nHost: router\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    answer = b""
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head)
        sent = 0
        # Send until the answer shows (at most twice the limit), never the final chunk.
        while sent < 2 * BODY_LIMIT and not select.select([sock], [], [], 0)[0]:
            sock.sendall(frame)
            sent += len(chunk)
        try:
            while data := sock.recv(65536):  # ends only if the router closes
                answer += data
        except ConnectionResetError:
            pass  # closed with our unread frames in its buffer: a reset, after the answer
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in answer.lower()
