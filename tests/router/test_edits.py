"""POST /v1/images/edits against small real workers: the official SDK and bad uploads."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from router_fakes import (
    EDIT_SIZE,
    FakeWorker,
    metric_value,
    router_client,
    router_settings,
    serve,
)

from qwen_image_common.encoding import DEFAULT_COMPRESSION
from qwen_image_router.app import create_app
from qwen_image_router.errors import ValidationFailed
from qwen_image_router.uploads import plain_picture

EDITS = "/v1/images/edits"
EDITOR = "Qwen-Image-Edit-2509"


def picture(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, (width, height))
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def bomb_png(side: int) -> bytes:
    """A valid tiny PNG whose header claims `side` x `side` pixels."""
    data = bytearray(picture(8, 8))
    ihdr = bytearray(data[12:29])  # chunk type and its 13 bytes
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def decoded(png_b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(png_b64)))
    image.load()
    return image


def editor_worker() -> FakeWorker:
    return FakeWorker(model=EDITOR, task="edit")


async def test_the_openai_sdk_edits_one_and_two_pictures_in_both_formats(
    tmp_path: Path,
) -> None:
    generator, editor = FakeWorker(), editor_worker()
    async with serve(generator.app) as generator_url, serve(editor.app) as editor_url:
        app = create_app(router_settings(tmp_path, [generator_url, editor_url]))
        async with serve(app, lifespan="on") as router_url:
            client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="unused")
            one = await client.images.edit(
                model=EDITOR,
                image=("cat.png", picture(300, 200), "image/png"),
                prompt="make the cat blue",
                extra_body={"seed": 5, "num_inference_steps": 4},
            )
            two = await client.images.edit(
                model=EDITOR,
                image=[
                    ("a.png", picture(64, 64), "image/png"),
                    ("b.jpg", picture(40, 80, fmt="JPEG"), "image/jpeg"),
                ],
                prompt="put the cat of picture 1 on the sofa of picture 2",
                n=2,
                size="512x512",
                response_format="url",
            )
            assert one.data is not None and two.data is not None
            assert decoded(one.data[0].b64_json or "").size == EDIT_SIZE
            async with httpx.AsyncClient() as http:
                stored = [(await http.get(item.url or "")).content for item in two.data]
            await client.close()
    assert [Image.open(io.BytesIO(png)).size for png in stored] == [(512, 512)] * 2
    first, second = editor.jobs
    assert (first.width, first.height, first.seeds, first.num_inference_steps) == (
        None,
        None,
        [5],
        4,
    )
    assert [decoded(p).size for p in first.pictures] == [(300, 200)]
    assert [decoded(p).size for p in second.pictures] == [(64, 64), (40, 80)]
    assert len(second.seeds) == 2 and generator.jobs == []


async def test_an_edit_answers_in_the_output_format_asked_for_b64_json_and_url(
    tmp_path: Path,
) -> None:
    editor = editor_worker()
    async with serve(editor.app) as editor_url:
        app = create_app(router_settings(tmp_path, [editor_url]))
        async with serve(app, lifespan="on") as router_url:
            client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="unused")
            inline = await client.images.edit(
                image=("cat.png", picture(300, 200), "image/png"),
                prompt="make the cat blue",
                output_format="jpeg",
                output_compression=40,
            )
            stored = await client.images.edit(
                image=("cat.png", picture(300, 200), "image/png"),
                prompt="make the cat blue",
                output_format="webp",
                size="256x256",
                response_format="url",
            )
            assert inline.data is not None and stored.data is not None
            async with httpx.AsyncClient() as http:
                served = await http.get(stored.data[0].url or "")
            await client.close()
    assert (inline.output_format, inline.size) == ("jpeg", "x".join(map(str, EDIT_SIZE)))
    assert decoded(inline.data[0].b64_json or "").format == "JPEG"
    assert (stored.output_format, stored.size) == ("webp", "256x256")
    assert (stored.data[0].url or "").endswith(".webp")
    assert Image.open(io.BytesIO(served.content)).format == "WEBP"
    assert [(job.output_format, job.output_compression) for job in editor.jobs] == [
        ("jpeg", 40),
        ("webp", DEFAULT_COMPRESSION),
    ]


async def test_edits_are_counted_with_the_requests_ok_or_refused(tmp_path: Path) -> None:
    editor = editor_worker()
    async with serve(editor.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        done = await client.post(EDITS, data={"prompt": "x"}, files={"image": ("p", picture(8, 8))})
        refused = await client.post(EDITS, data={"prompt": "x"})
        metrics = (await client.get("/metrics")).text
    assert (done.status_code, refused.status_code) == (200, 400)
    requests = "qwen_image_router_requests_total"
    assert metric_value(metrics, requests, status="200", reason="ok") == 1
    assert metric_value(metrics, requests, status="400", reason="validation") == 1
    assert metric_value(metrics, "qwen_image_router_request_duration_seconds_count") == 1


async def test_an_edit_logs_one_line_naming_its_model_user_and_pictures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    editor = editor_worker()
    pictures = [("image[]", ("p", picture(8, 8))), ("image[]", ("q", picture(8, 8)))]
    async with serve(editor.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        with caplog.at_level("INFO", logger="qwen_image_router"):
            done = await client.post(
                EDITS, data={"prompt": "x", "user": "team\nfake line"}, files=pictures
            )
    assert done.status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edit ")]
    assert f"model={EDITOR} user='team\\nfake line' pictures=2 n=1 size=auto" in line
    assert "outcome=ok" in line


def upright_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF says: turn me 90 degrees to show me."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return picture(40, 20, fmt="JPEG", exif=exif.tobytes())


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (upright_jpeg(), (20, 40)),
        (picture(30, 10, mode="P"), (30, 10)),
        (picture(30, 10, mode="RGBA"), (30, 10)),
        (picture(30, 10, mode="CMYK", fmt="JPEG"), (30, 10)),
        (picture(30, 10, fmt="WEBP"), (30, 10)),
    ],
)
async def test_pictures_reach_the_worker_upright_and_rgb(
    tmp_path: Path, data: bytes, size: tuple[int, int]
) -> None:
    editor = editor_worker()
    async with serve(editor.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        answer = await client.post(EDITS, data={"prompt": "x"}, files={"image": ("p", data)})
    assert answer.status_code == 200, answer.text
    sent = decoded(editor.jobs[0].pictures[0])
    assert (sent.format, sent.mode, sent.size) == ("PNG", "RGB", size)


@pytest.mark.parametrize(
    ("files", "fields", "problem"),
    [
        ([("image", b"no picture here")], {}, "image 1: not a picture"),
        ([("image", picture(64, 64)[:-40])], {}, "image 1: truncated or corrupt"),
        ([("image", bomb_png(50_000))], {}, "image 1: at most 16777216 pixels"),
        ([("image", bomb_png(5_000))], {}, "image 1: 5000x5000 pixels; at most 16777216"),
        ([("image", picture(8, 8, fmt="GIF"))], {}, "image 1: unsupported format GIF"),
        ([("image[]", picture(8, 8))] * 4, {}, "image: at most 3 pictures, got 4"),
        ([("image", picture(8, 8)), ("mask", picture(8, 8))], {}, "mask: "),
        ([], {"prompt": "x"}, "image: at least one picture"),
        ([("image", picture(8, 8))], {"n": "9"}, "n: "),
        ([("image", picture(8, 8))], {"size": "640x480"}, "size: "),
        ([("image", picture(8, 8))], {"stream": "true", "partial_images": "4"}, "partial_images"),
        ([("image", b"no picture")], {"stream": "true"}, "image 1: not a picture"),
        ([("image", picture(8, 8))], {"model": "Qwen-Image"}, "Model not available: Qwen-Image"),
    ],
)
async def test_bad_uploads_are_400s_naming_the_problem(
    tmp_path: Path, files: list[tuple[str, bytes]], fields: dict[str, str], problem: str
) -> None:
    editor = editor_worker()
    async with serve(editor.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        answer = await client.post(
            EDITS,
            data={"prompt": "make it blue"} | fields,
            files=[(name, ("f", data)) for name, data in files] or None,
        )
    assert answer.status_code == 400, answer.text
    assert problem in answer.json()["detail"]
    assert editor.jobs == []


async def test_an_upload_over_the_edit_body_limit_is_413(tmp_path: Path) -> None:
    editor = editor_worker()
    settings = router_settings(tmp_path, ["http://127.0.0.1:9"], max_edit_body_bytes=4096)
    async with serve(editor.app), router_client(settings) as client:
        answer = await client.post(
            EDITS, data={"prompt": "x"}, files={"image": ("p", b"\0" * 8192)}
        )
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("Request body too large")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([picture(24, 16), picture(24, 16, fmt="JPEG"), picture(24, 16, fmt="WEBP")]),
    st.integers(min_value=0, max_value=200),
    st.binary(min_size=1, max_size=16),
)
def test_a_mangled_picture_is_a_400_or_a_picture_never_a_crash(
    original: bytes, at: int, noise: bytes
) -> None:
    data = original[:at] + noise + original[at + len(noise) :]
    try:
        png = plain_picture(data, "image 1")
    except ValidationFailed as exc:
        assert exc.detail.startswith("Validation error: image 1: ")
        return
    assert decoded(png).mode == "RGB"
