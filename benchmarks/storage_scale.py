"""What a url answer costs when the images folder is full: url against b64_json medians.

The folder is filled with --images stored images (ages spread over the last hour), each as
large as the PNG one answer stores, and IMAGE_RETENTION_MAX_BYTES is set to their total, so
every url answer pushes the folder over its cap and retention has to delete one. One router
and one worker with the simulated engine (no step time: what remains is the router's own
work) on 127.0.0.1.
Printed per client count: the median answer time of each format and their ratio, and the
router's start-up time with that folder (its retention index is built from it). With
--index-only: the memory the index takes per image and the time of one sweep, in-process.

    .venv/bin/python benchmarks/storage_scale.py                  # 50,000 images
    .venv/bin/python benchmarks/storage_scale.py --images 5000 --requests 20
    .venv/bin/python benchmarks/storage_scale.py --index-only --images 200000
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from load import LocalStack
from PIL import Image

from qwen_image_router.storage import ImageStorage

BODY = {"prompt": "a storage benchmark", "size": "256x256", "num_inference_steps": 1}


def answer_png_bytes() -> int:
    """The size of the PNG of one answer: the simulated engine's flat 256x256 image."""
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (7, 0, 0)).save(buffer, format="PNG")
    return len(buffer.getvalue())


def fill(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    payload = b"\x89PNG" + b"\0" * (size - 4)
    now = time.time()
    for i in range(count):
        path = folder / f"{uuid.uuid4().hex}.png"
        path.write_bytes(payload)
        stamp = now - 3600 + i * (3000 / count)
        os.utime(path, (stamp, stamp))


def timed(client: httpx.Client, url: str, response_format: str) -> float:
    started = time.perf_counter()
    answer = client.post(url, json={**BODY, "response_format": response_format}, timeout=120)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed


def median_seconds(url: str, response_format: str, requests: int, clients: int) -> float:
    def one_client(_: int) -> list[float]:
        with httpx.Client() as client:
            return [timed(client, url, response_format) for _ in range(requests)]

    with ThreadPoolExecutor(clients) as pool:
        times = [t for batch in pool.map(one_client, range(clients)) for t in batch]
    return statistics.median(times)


def index_cost(folder: Path, images: int, cap: int) -> None:
    storage = ImageStorage(folder, max_age_seconds=86400, max_total_bytes=cap)
    tracemalloc.start()
    started = time.perf_counter()
    storage.prepare()
    sweep = time.perf_counter() - started
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"index of {images} images: {held / images:.0f} bytes per image, sweep {sweep:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000, help="images stored beforehand")
    parser.add_argument("--requests", type=int, default=30, help="per client and format")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--index-only", action="store_true", help="measure the index alone")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="storage-scale-") as tmp:
        folder = Path(tmp) / "images"
        image_bytes = answer_png_bytes()
        fill(folder, args.images, image_bytes)
        if args.index_only:
            index_cost(folder, args.images, args.images * image_bytes)
            return
        stack = LocalStack(Path(tmp))
        try:
            stack.start_workers(1, step_seconds=0.0, queue_size=64)
            started = time.perf_counter()
            stack.start_routers(1, {"IMAGE_RETENTION_MAX_BYTES": str(args.images * image_bytes)})
            start_up = time.perf_counter() - started
            url = stack.router_urls[0] + "/v1/images/generations"
            print(f"{args.images} stored images of {image_bytes} bytes, cap reached")
            print(f"router start-up with that folder: {start_up:.2f} s")
            for clients in args.clients:
                inline = median_seconds(url, "b64_json", args.requests, clients)
                stored = median_seconds(url, "url", args.requests, clients)
                print(
                    f"{clients} client(s): median b64_json {inline * 1000:.0f} ms, "
                    f"url {stored * 1000:.0f} ms, url/b64_json {stored / inline:.2f}x"
                )
            kept = sum(1 for _ in os.scandir(folder))
            print(f"files in the folder at the end: {kept}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
