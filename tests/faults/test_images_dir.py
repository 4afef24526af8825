"""The images directory full, then read-only, under a running router.

A small tmpfs mounted on the folder does both for real: filled up, writes fail with ENOSPC;
remounted read-only, with EROFS. (The tests run as root, for whom chmod would not stop a
write; a mount does.)
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fault_stack import generate, spec_error, start_router, start_worker
from PIL import Image

pytestmark = pytest.mark.faults

NO_HANG = 30.0


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"mount {' '.join(args)} failed (needs root): {done.stderr}"


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    mount("-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write one file until the filesystem is full; returns it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while handle.write(b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def stored_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "filler")


def test_a_full_or_read_only_images_folder_fails_url_requests_cleanly(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    worker = start_worker(tmp_path)
    router = start_router(tmp_path, [worker.url], IMAGE_OUTPUT_DIR=str(small_tmpfs))
    body = {"size": "512x512", "num_inference_steps": 2, "response_format": "url"}
    try:
        filler = fill(small_tmpfs)
        full = generate(router.url, NO_HANG, **body)
        assert spec_error(full) == "Image storage failed"
        assert stored_files(small_tmpfs) == []  # no half-written image, no temp file
        # b64_json answers need no disk.
        inline = generate(router.url, NO_HANG, num_inference_steps=2)
        assert inline.status_code == 200

        filler.unlink()
        mount("-o", "remount,ro", str(small_tmpfs))
        read_only = generate(router.url, NO_HANG, **body)
        assert spec_error(read_only) == "Image storage failed"
        assert stored_files(small_tmpfs) == []

        mount("-o", "remount,rw", str(small_tmpfs))
        stored = generate(router.url, NO_HANG, **body)
        assert stored.status_code == 200, stored.text
        served = httpx.get(stored.json()["data"][0]["url"])
        assert served.status_code == 200
        image = Image.open(io.BytesIO(served.content))
        assert (image.format, image.size) == ("PNG", (512, 512))
        image.load()  # the whole file decodes: it was complete when served
        (name,) = stored_files(small_tmpfs)
        assert served.url.path.endswith(name)

        requests = "qwen_image_router_requests_total"
        assert router.metric(requests, status="500", reason="storage_failed") == 2
        assert router.metric(requests, status="200", reason="ok") == 2
        log = router.service.log()
        assert "No space left on device" in log and "Read-only file system" in log
    finally:
        router.stop()
        worker.stop()


def test_retention_skips_a_foreign_entry_and_keeps_the_newest_response(tmp_path: Path) -> None:
    """A folder named like an image cannot be deleted: retention logs it once and goes on.
    A size cap below one response still leaves that response's URLs working until the
    next response replaces them."""
    images = tmp_path / "images"
    images.mkdir()
    planted = images / f"{uuid.uuid4().hex}.png"
    planted.mkdir()
    long_ago = time.time() - 3600
    os.utime(planted, (long_ago, long_ago))  # the oldest entry: the first to be deleted
    worker = start_worker(tmp_path)
    router = start_router(tmp_path, [worker.url], IMAGE_RETENTION_MAX_BYTES="1")
    body = {"size": "256x256", "num_inference_steps": 1, "response_format": "url", "n": 2}
    try:
        answers = [generate(router.url, NO_HANG, **body) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text
        urls = [[d["url"] for d in a.json()["data"]] for a in answers]
        assert [httpx.get(url).status_code for url in urls[-1]] == [200, 200]
        assert [httpx.get(url).status_code for url in urls[0] + urls[1]] == [404] * 4
        newest = sorted(url.rsplit("/", 1)[1] for url in urls[-1])
        assert stored_files(images) == sorted([*newest, planted.name])
        assert planted.is_dir()
        assert router.service.log().count(planted.name) == 1
    finally:
        router.stop()
        worker.stop()
