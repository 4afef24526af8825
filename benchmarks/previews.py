"""What partial images cost a streamed job: the same job with 0 and with --partial-images
previews, through the worker's real engine, same process, same run.

A preview is the clean picture the model predicts after a step, decoded by the pipeline's VAE
at the final size (qwen_image_worker/engine/previews.py); its encoding runs on another
thread and is not counted here. Printed per size: the median job time without and with
previews, the difference per preview, and the share of the job the previews take.

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
        streamed = replace(plain, partial_images=args.partial_images)
        with_previews, count = timed(engine, streamed, args.repeats)
        each = (with_previews - without) / max(1, count)
        print(
            f"{side}x{side}: job {without:.3f} s, with {count} previews {with_previews:.3f} s; "
            f"{each * 1000:.1f} ms a preview, {(with_previews - without) / without * 100:.1f} % "
            "of the job"
        )


if __name__ == "__main__":
    main()
