"""What each output format costs the worker: encode time and file size per format.

The worker encodes every image on a thread beside the GPU thread (qwen_image_worker/queue.py)
through `qwen_image_common.encoding.encode_image`; this times that function on this machine's
CPU. Two pictures per size: "noise" (uniform random pixels, what the demo model draws and the
worst case for every codec) and "scene" (a smooth synthetic picture with fine detail and a
little grain, closer to a photograph; no real photograph ships with the repository). Printed
per size, picture and format: the median of --repeats encodes in ms and the file's size.

    .venv/bin/python benchmarks/encoding.py                         # 1024x1024 and 1328x1328
    .venv/bin/python benchmarks/encoding.py --sizes 256 --repeats 3 --compression 75
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from qwen_image_common.encoding import DEFAULT_COMPRESSION, IMAGE_FORMATS, encode_image


def noise(side: int, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def scene(side: int, rng: np.random.Generator) -> Image.Image:
    """Smooth colour fields, a fractal's detail, and grain of a few levels."""
    y, x = np.mgrid[0:side, 0:side] / side
    detail = np.asarray(
        Image.effect_mandelbrot((side, side), (-0.75, -0.2, -0.65, -0.1), 200), dtype=np.float64
    )
    red = 200 * x + 0.2 * detail
    green = 120 + 100 * np.sin(6 * y) * np.cos(4 * x)
    blue = 255 * (1 - y) * 0.8 + 0.1 * detail
    rgb = np.stack([red, green, blue], axis=-1) + rng.normal(0, 3, (side, side, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


PICTURES: dict[str, Callable[[int, np.random.Generator], Image.Image]] = {
    "noise": noise,
    "scene": scene,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 1328])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compression", type=int, default=DEFAULT_COMPRESSION)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"output_compression {args.compression}, median of {args.repeats} encodes")
    for side in args.sizes:
        for picture, make in PICTURES.items():
            image = make(side, rng)
            for fmt in IMAGE_FORMATS:
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    data = encode_image(image, fmt, args.compression)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - started)
                print(
                    f"{side}x{side} {picture:5} {fmt:4}: {statistics.median(times) * 1000:8.1f} ms "
                    f"{len(data) / 1e6:7.3f} MB"
                )


if __name__ == "__main__":
    main()
