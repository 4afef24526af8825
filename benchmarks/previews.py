"""What partial images cost a streamed job, through the worker's real engine, same process.

A preview is the clean picture the model predicts after a step, decoded by the pipeline's VAE
at the final size (qwen_image_worker/engine/previews.py); its encoding runs on another
thread and is not counted here. Printed per size: the median time of a job without previews,
of one preview's decode (timed alone: a difference of two jobs drowns in the noise of a
shared machine), the share of the job --partial-images previews add, and as a check the
median time of the same job with its previews.

    .venv/bin/python benchmarks/previews.py                          # demo model, CPU
    .venv/bin/python benchmarks/previews.py --sizes 256 --steps 4 --repeats 1
    .venv/bin/python benchmarks/previews.py --model-path /models/Qwen-Image --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from qwen_image_worker.engine.base import ImageSpec
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.loading import load_pipeline, pick_device
from qwen_image_worker.engine.previews import decode


def decode_seconds(engine: Engine, side: int, repeats: int) -> float:
    """Median seconds of one preview's decode: packed latents of the size, to a picture."""
    pipe = engine.pipe
    tokens = (side // 16) ** 2
    packed = torch.randn(1, tokens, pipe.transformer.config.in_channels, device=engine.device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            decode(pipe, packed, side, side)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed(engine: Engine, spec: ImageSpec, repeats: int) -> tuple[float, int]:
    """Median seconds of `repeats` jobs, and how many previews each made."""
    times, made = [], []
    for _ in range(repeats):
        made.clear()
        started = time.perf_counter()
        engine.generate_batch([spec], lambda: False, lambda _p, index, _i: made.append(index))
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", default=None, help="A diffusers folder; default: demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--partial-images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine = Engine(load_pipeline(args.model_path, pick_device(args.device)))
    print(f"device {engine.device}, {args.steps} steps, median of {args.repeats}")
    for side in args.sizes:
        plain = ImageSpec("a lighthouse at dusk", "", side, side, args.steps, 4.0, seed=1)
        engine.generate_batch([plain], lambda: False)  # warm-up at this size
        without, _ = timed(engine, plain, args.repeats)
        each = decode_seconds(engine, side, args.repeats)
        streamed = replace(plain, partial_images=args.partial_images)
        with_previews, count = timed(engine, streamed, args.repeats)
        print(
            f"{side}x{side}: job {without:.3f} s, a preview {each * 1000:.1f} ms, "
            f"{count} previews {count * each / without * 100:.1f} % of the job "
            f"(job with them {with_previews:.3f} s)"
        )


if __name__ == "__main__":
    main()
