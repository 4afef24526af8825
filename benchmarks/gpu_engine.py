"""Stock diffusers against the worker's engine, back to back on one GPU, same random weights.

Builds Qwen-Image's full-size transformer (60 blocks, 20B parameters) and VAE with random
weights, directly on the GPU (no download; the same arithmetic as the real model), plus a
text encoder of the real width (3584) but one layer and a byte-level tokenizer: text
encoding is not what is timed, and this one keeps prompts real strings of real length.

Order (one copy of the weights at a time, so it fits an 80 GB card): every stock measurement
first; then, for each engine variant of --variants, the model is built again from the same
seed (the same weights), the variant's levers are pulled (`accelerate`, then the worker's
start-up warm-up, timed) and the engine is measured. Per size: an untimed warm-up call, then
a timed one at --steps, true CFG 4.0, the same seed throughout. Outputs are captured inside
the VAE (latents in, pixels out, as floats) and compared by `relative_error`: a lossless
variant against stock, within `lossless_tolerance` (acceleration.py), whose spread is stock
run once more with another exact attention kernel in the transformer; a fast mode (FP8, the
step cache) against the lossless variant's output, reported, not judged. The "lossless"
variant also fills the stock-vs-engine `rows` and, unless switched off, runs images per
second by batch size (one pipeline call per batch of equal-length prompts), the real
JobQueue under a full queue by batch limit (images/s, busy fraction, each job's picture
against one-at-a-time), at CUDA-graph sizes a probe of the forward alone (batch 1 and 2:
what a whole-step graph or batched CFG could still gain), and at the other sizes the
forward's time split by kind of kernel beside its FLOPs (forward_profile.py). The edit row
(key `edit`, --edit-size, one input picture of that size): stock QwenImageEditPlusPipeline
beside the stock rows, and the worker's EditEngine with the lossless variant's levers after
that variant, on a fresh build; the full run's editor holds the generation model's
transformer and VAE.

  python benchmarks/gpu_engine.py --out report.json             # full size, CUDA, 50 steps
  python benchmarks/gpu_engine.py --steps 12 --budget-s 300 \\
      --variants lossless,fp8,cache-0.1 ...                     # fewer steps, extrapolated
  python benchmarks/gpu_engine.py --tiny --out report.json      # demo model on the CPU, <1 min

The JSON report is rewritten after every section, so a run cut short leaves what it measured.
Variants are WorkerSettings overrides (VARIANTS below) on top of the environment, which the
levers are read from like the worker's (FUSE_QKV=false, CUDA_GRAPH_MAX_PIXELS=0, ...).
--tiny uses the demo model with 4 blocks and pulls only the levers that run on a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import itertools
import json
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
    VAE_IMAGE_SIZE,
    calculate_dimensions,
)
from forward_profile import attention_backends, forward_flops, masked_attention, profile_forward
from PIL import Image
from report_table import table
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from qwen_image_common.contract import PIXELS_PER_TOKEN, JobRequest
from qwen_image_worker.engine.acceleration import (
    LOSSLESS_REL_L2_TOLERANCE,
    SPREAD_FACTOR,
    Accelerated,
    Levers,
    accelerate,
    batch_limit,
    lossless_tolerance,
    relative_error,
)
from qwen_image_worker.engine.base import BatchLimit, ImageSpec, OnPreview
from qwen_image_worker.engine.demo_edit_model import build_demo_edit_pipeline
from qwen_image_worker.engine.demo_model import QWEN_IMAGE_SCHEDULER, build_demo_pipeline
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.editing import EditEngine
from qwen_image_worker.metrics import WorkerMetrics
from qwen_image_worker.queue import JobQueue
from qwen_image_worker.settings import WorkerSettings, parse_sizes

PROMPT = "a lighthouse on a cliff at dusk, waves breaking below, long exposure, 35 mm photograph"
EDIT_PROMPT = "make it a winter night: snow on the cliff, the lighthouse's beam lit"
NEGATIVE = " "  # what the engine sends for an empty negative prompt
CFG_SCALE = 4.0
SEED = 1234
FULL_STEPS = 50
FULL_SIZES = "1328x1328,1024x1024,512x512"
# The edit row's output, and its one input picture, of that size too.
FULL_EDIT_SIZE = "1024x1024"
TINY_EDIT_SIZE = "128x128"
# The Qwen2.5-VL config keys naming the vision tokens, read from the demo editor's.
VISION_TOKEN_KEYS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)
TEXT_WIDTH = 3584
TINY_LAYERS = 4  # enough blocks for FP8's bf16 edge blocks and the step cache to act
# The other exact attention kernel that measures stock's own spread (default: flash or cuDNN).
SPREAD_KERNEL = {"cuda": "efficient", "cpu": "math"}
# Timed forwards per batch size in the probe, after three untimed ones (compile, capture).
PROBE_RUNS = {"cuda": 10, "cpu": 2}
# Profiled forwards at sizes that ran without a CUDA graph (a graph hides its kernels).
PROFILE_RUNS = 3
TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": TEXT_WIDTH,
    "axes_dims_rope": (16, 56, 56),
}


@dataclass(frozen=True)
class Variant:
    """An engine configuration: WorkerSettings overrides on top of the environment's."""

    name: str
    settings: dict[str, Any]
    lossless: bool
    note: str
    # Where --variants gives NAME@WxH+WxH: its rows and warm-up at those sizes only.
    sizes: tuple[tuple[int, int], ...] = ()
    # Its rows that ran without a CUDA graph get a forward split by kind of kernel.
    profiled: bool = False


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("lossless", {}, True, "the worker's defaults", profiled=True),
        Variant(
            "autotune",
            {"compile_mode": "max-autotune-no-cudagraphs"},
            True,
            "the defaults, blocks compiled with max-autotune (Triton GEMM templates)",
        ),
        Variant(
            "unpaired",
            {"paired_cfg_max_pixels": 0},
            True,
            "the defaults with CFG's two forwards a step one after the other",
        ),
        Variant(
            "paired-all",
            {"paired_cfg_max_pixels": 2048 * 2048},
            True,
            "the defaults with CFG's two forwards joined at every size",
        ),
        Variant(
            "complex-rope",
            {"real_rope": False},
            True,
            "the defaults with diffusers' complex64 RoPE",
        ),
        Variant(
            "separate-gelu",
            {"gelu_epilogue": False},
            True,
            "the defaults with the MLP's GELU as its own kernel, not in the matmul's epilogue",
        ),
        Variant(
            "cudnn",
            {"attention_backend": "cudnn"},
            True,
            "the defaults with all attention through SDPA, cuDNN first (no FlashAttention-3)",
            profiled=True,
        ),
        Variant(
            "sdpa-padded",
            {"flash3_padded_batches": False},
            True,
            "the defaults with the masked calls (a padded text) through SDPA's mask, cuDNN "
            "first, not FA3 over used keys (FLASH3_PADDED_BATCHES=false)",
        ),
        Variant(
            "cudnn+separate-gelu",
            {"attention_backend": "cudnn", "gelu_epilogue": False},
            True,
            "SDPA cuDNN-first and the GELU as its own kernel, the other defaults kept",
        ),
        Variant(
            "fp8",
            {"fp8_matmuls": True},
            False,
            "FP8 row-wise; first and last block bf16",
            profiled=True,
        ),
        Variant(
            "fp8-tensor",
            {"fp8_matmuls": True, "fp8_scaling": "tensor"},
            False,
            "FP8 with one scale per matrix; first and last block bf16",
        ),
        Variant(
            "fp8-all-blocks",
            {"fp8_matmuls": True, "fp8_bf16_edge_blocks": 0},
            False,
            "FP8 row-wise in every block",
        ),
        Variant(
            "fp8-eager",
            {"fp8_matmuls": True, "compile_transformer": False},
            False,
            "FP8 row-wise without torch.compile (graphs still on at small sizes)",
        ),
        Variant(
            "cache-0.05",
            {"step_cache": True, "step_cache_threshold": 0.05},
            False,
            "first-block step cache, threshold 0.05 (graphs off)",
        ),
        Variant(
            "cache-0.1",
            {"step_cache": True, "step_cache_threshold": 0.1},
            False,
            "first-block step cache, threshold 0.1 (graphs off)",
        ),
        Variant(
            "cache-0.2",
            {"step_cache": True, "step_cache_threshold": 0.2},
            False,
            "first-block step cache, threshold 0.2 (graphs off)",
        ),
        Variant(
            "fp8+cache-0.1",
            {"fp8_matmuls": True, "step_cache": True, "step_cache_threshold": 0.1},
            False,
            "FP8 row-wise and the step cache at 0.1",
        ),
    )
}


@dataclass(frozen=True)
class Plan:
    tiny: bool
    device: torch.device
    steps: int
    sizes: list[tuple[int, int]]
    variants: list[Variant]
    batch_sizes: list[tuple[int, int]]
    batches: list[int]
    batch_steps: int
    queue_jobs: int
    queue_steps: int
    warmup_sizes: list[tuple[int, int]]
    budget_s: float | None
    spread: bool
    throughput: bool
    queue: bool
    probe: bool
    profile: bool
    edit_size: tuple[int, int] | None  # None: no edit row


def parse_variants(value: str) -> list[Variant]:
    """'lossless,unpaired@512x512+256x256': variants, each at every --sizes size or at its
    own."""
    items = [item.strip().partition("@") for item in value.split(",") if item.strip()]
    unknown = [name for name, _, _ in items if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}"
        )
    variants = []
    for name, _, sizes in items:
        try:
            own = tuple(parse_sizes(sizes.replace("+", ","))) if sizes else ()
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"variant '{name}@{sizes}': {error}") from error
        variants.append(replace(VARIANTS[name], sizes=own))
    return variants


def parse_args(argv: list[str]) -> tuple[Plan, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="demo model on the CPU, tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("gpu_engine.json"))
    parser.add_argument("--steps", type=int, help="denoising steps of the timed runs")
    parser.add_argument("--sizes", help="WxH,... of the stock-vs-engine rows")
    parser.add_argument(
        "--variants",
        type=parse_variants,
        help="engine variants, in order, each optionally @WxH+WxH for its own sizes "
        f"(default: lossless; --tiny: all): {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--batch-sizes", help="WxH,... of the throughput-by-batch and full-queue runs"
    )
    parser.add_argument(
        "--batches", help="batch sizes (BATCH_MAX_IMAGES in the queue), e.g. 1,2,4,8"
    )
    parser.add_argument("--batch-steps", type=int, help="steps of each throughput run")
    parser.add_argument("--queue-jobs", type=int, help="jobs sent at once to the real JobQueue")
    parser.add_argument("--queue-steps", type=int, help="steps of each queued job")
    parser.add_argument(
        "--warmup-sizes",
        help="sizes of each variant's start-up warm-up (WARMUP_SIZES; default: all served)",
    )
    parser.add_argument(
        "--no-spread",
        action="store_true",
        help="skip stock's second run under another attention kernel (tolerance: the floor)",
    )
    parser.add_argument("--no-throughput", action="store_true", help="skip images/s by batch")
    parser.add_argument("--no-queue", action="store_true", help="skip the full-queue runs")
    parser.add_argument("--no-probe", action="store_true", help="skip the forward-alone probe")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the forward's split by kind of kernel"
    )
    parser.add_argument(
        "--edit-size",
        help="WxH of the edit row's output and its one input picture (default: "
        f"{FULL_EDIT_SIZE}; --tiny: {TINY_EDIT_SIZE})",
    )
    parser.add_argument("--no-edit", action="store_true", help="skip the edit row")
    parser.add_argument(
        "--budget-s", type=float, help="skip sections that would start after this many seconds"
    )
    args = parser.parse_args(argv)
    tiny = args.tiny
    default_variants = list(VARIANTS.values()) if tiny else [VARIANTS["lossless"]]
    plan = Plan(
        tiny=tiny,
        device=torch.device("cpu" if tiny else "cuda"),
        steps=args.steps or (3 if tiny else FULL_STEPS),
        sizes=parse_sizes(args.sizes or ("256x256,128x128" if tiny else FULL_SIZES)),
        variants=args.variants if args.variants is not None else default_variants,
        batch_sizes=parse_sizes(args.batch_sizes or ("128x128" if tiny else "512x512,256x256")),
        batches=[int(b) for b in (args.batches or ("1,2" if tiny else "1,2,4,8")).split(",")],
        batch_steps=args.batch_steps or (2 if tiny else 8),
        queue_jobs=args.queue_jobs or (4 if tiny else 16),
        queue_steps=args.queue_steps or (2 if tiny else 10),
        warmup_sizes=parse_sizes(
            args.warmup_sizes or ("64x64,96x64" if tiny else WorkerSettings().warmup_sizes)
        ),
        budget_s=args.budget_s,
        spread=not args.no_spread,
        throughput=not args.no_throughput,
        queue=not args.no_queue,
        probe=not args.no_probe,
        profile=not args.no_profile,
        edit_size=None
        if args.no_edit
        else parse_sizes(args.edit_size or (TINY_EDIT_SIZE if tiny else FULL_EDIT_SIZE))[0],
    )
    return plan, args.out


# --- measuring -------------------------------------------------------------------------------


class Clock:
    """Host time after the device has caught up: per-step marks are real step times."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.started = time.perf_counter()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class Marks:
    """Step marks, fed by a pipeline callback (stock) or the engine's on_step (engine)."""

    clock: Clock
    times: list[float] = field(default_factory=list)

    def on_step(self, _seconds: float = 0.0) -> None:
        self.times.append(self.clock.now())

    def callback(self, _pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.on_step()
        return kwargs

    @contextmanager
    def timing(self, steps: int, batch: int = 1) -> Iterator[dict[str, Any]]:
        """Fills the yielded dict with the run's times once the block ends."""
        self.times.clear()
        result: dict[str, Any] = {}
        start = self.clock.now()
        yield result
        end = self.clock.now()
        result.update(summarise(start, self.times, end, steps, batch))


def summarise(
    start: float, marks: list[float], end: float, steps: int, batch: int
) -> dict[str, Any]:
    """Total, median step, and the time after the last step (VAE decode, image conversion).

    `extrapolated_50_steps_s` is the measured total plus (50 - steps) median steps: an
    estimate, labelled as such, for runs made with fewer steps than a real request's 50.
    """
    total = end - start
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    step = statistics.median(gaps) if gaps else None
    extrapolated = total + (FULL_STEPS - steps) * step if step is not None else None
    return {
        "steps": steps,
        "total_s": round(total, 4),
        "median_step_s": None if step is None else round(step, 5),
        "after_last_step_s": round(end - marks[-1], 4) if marks else None,
        "extrapolated_50_steps_s": None if extrapolated is None else round(extrapolated, 3),
        "images_per_s": round(batch / total, 4),
        "images_per_s_at_50_steps": None
        if extrapolated is None
        else round(batch / extrapolated, 4),
    }


class Capture:
    """The VAE's input latents and decoded pixels (floats, before clamping and uint8) of the
    last image, read by hooks on the same modules in the stock and the engine runs."""

    def __init__(self, pipe: Any) -> None:
        self.latents: torch.Tensor | None = None
        self.pixels: torch.Tensor | None = None
        vae: Any = pipe.vae
        vae.post_quant_conv.register_forward_pre_hook(self._latents)
        vae.decoder.register_forward_hook(self._pixels)

    def _latents(self, _module: Any, args: tuple[Any, ...]) -> None:
        self.latents = args[0].detach().float().cpu()

    def _pixels(self, _module: Any, _args: Any, output: torch.Tensor) -> None:
        self.pixels = output.detach().float().cpu()

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.latents is not None and self.pixels is not None
        return self.latents, self.pixels


def gpu_utilisation_sampler() -> tuple[Callable[[], None], Callable[[], float | None]]:
    """Samples NVML's 'a kernel was running' percentage every 50 ms while the queue runs."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            try:
                samples.append(torch.cuda.utilization() / 100.0)
            except Exception:
                return

    thread = threading.Thread(target=sample, daemon=True)

    def finish() -> float | None:
        stop.set()
        thread.join()
        return round(statistics.fmean(samples), 3) if samples else None

    return thread.start, finish


# --- the model -------------------------------------------------------------------------------


def build_full_pipeline(device: torch.device) -> QwenImagePipeline:
    """Full-size transformer and VAE, random weights initialised on the GPU, in bf16."""
    tokenizer = build_demo_pipeline().tokenizer  # byte-level, tiny, no download
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = QwenImageTransformer2DModel(**TRANSFORMER)
            vae = AutoencoderKLQwenImage()  # its defaults are Qwen-Image's VAE
            text_encoder = Qwen2_5_VLForConditionalGeneration(text_config(tokenizer))
    finally:
        torch.set_default_dtype(previous)
    for module in (transformer, vae, text_encoder):
        module.to(torch.bfloat16).eval().requires_grad_(False)
    # Default init makes activations grow through 60 random blocks; halve the matrices the
    # way trained weights are scaled (as ../shared/tools/stock_diffusers_baseline.py does).
    with torch.no_grad():
        for param in transformer.parameters():
            if param.dim() >= 2:
                param.mul_(0.5)
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_config(tokenizer: Any, vision_tokens: dict[str, int] | None = None) -> Qwen2_5_VLConfig:
    """One decoder layer of Qwen2.5-VL's real width: real prompt lengths, negligible cost.
    Its vision tower is tiny; `vision_tokens` (an editor's) say which tokens it fills."""
    eos = tokenizer.eos_token_id
    return Qwen2_5_VLConfig(
        text_config={
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": TEXT_WIDTH,
            "num_hidden_layers": 1,
            "num_attention_heads": TEXT_WIDTH // 128,
            "num_key_value_heads": 4,
            "vocab_size": 320,
            "rope_scaling": {
                "mrope_section": [16, 24, 24],
                "rope_type": "default",
                "type": "default",
            },
            "rope_theta": 1000000.0,
            "bos_token_id": None,
            "eos_token_id": eos,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": TEXT_WIDTH,
        },
        hidden_size=TEXT_WIDTH,
        vocab_size=320,
        bos_token_id=None,
        eos_token_id=eos,
        **(vision_tokens or {}),
    )


def build_full_edit_pipeline(pipe: QwenImagePipeline) -> QwenImageEditPlusPipeline:
    """The editor of the edit row: `pipe`'s transformer and VAE (the same weights, no second
    copy), a text encoder like `pipe`'s that reads the pictures' vision tokens, and the demo
    editor's tokenizer and Qwen2-VL processor (built in code, a picture a few tokens)."""
    demo = build_demo_edit_pipeline()
    config = demo.text_encoder.config
    vision_tokens = {key: getattr(config, key) for key in VISION_TOKEN_KEYS}
    device = pipe.transformer.device
    torch.manual_seed(1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            text_encoder = Qwen2_5_VLForConditionalGeneration(
                text_config(demo.tokenizer, vision_tokens)
            )
    finally:
        torch.set_default_dtype(previous)
    text_encoder.to(torch.bfloat16).eval().requires_grad_(False)
    editor = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER),
        vae=pipe.vae,
        text_encoder=text_encoder,
        tokenizer=demo.tokenizer,
        processor=demo.processor,
        transformer=pipe.transformer,
    )
    editor.set_progress_bar_config(disable=True)
    return editor


def build_tiny_edit_pipeline() -> QwenImageEditPlusPipeline:
    """The demo editor as a worker serves it, its own VAE (the tiny generator's cannot
    encode); one block, as the edit row pulls no fast mode and a picture is 4096 tokens."""
    editor = build_demo_edit_pipeline(pipeline_class=QwenImageEditPlusPipeline)
    assert isinstance(editor, QwenImageEditPlusPipeline)
    editor.set_progress_bar_config(disable=True)
    return editor


def edit_picture(size: tuple[int, int]) -> Image.Image:
    """The edit row's input: a smooth picture with some noise, the same every run."""
    rng = np.random.default_rng(SEED)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([xs / size[0], ys / size[1], 0.5 + 0.5 * np.sin(xs / 37 + ys / 23)], -1)
    pixels = 255 * np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    return Image.fromarray(pixels.astype(np.uint8))


def edit_tokens(size: tuple[int, int], picture: Image.Image) -> int:
    """Image tokens of one edit forward: the output's, then the picture's at the size the
    edit pipeline gives it before its VAE."""
    width, height = calculate_dimensions(VAE_IMAGE_SIZE, picture.width / picture.height)
    return (size[0] * size[1] + width * height) // PIXELS_PER_TOKEN


def text_tokens(pipe: Any, prompt: str) -> int:
    """Tokens the transformer sees for `prompt`: the template's, less the dropped prefix."""
    ids = pipe.tokenizer(pipe.prompt_template_encode.format(prompt))["input_ids"]
    return len(ids) - pipe.prompt_template_encode_start_idx


def build_tiny_pipeline() -> QwenImagePipeline:
    """The demo model with TINY_LAYERS blocks, float32 on the CPU; every build the same."""
    pipe = build_demo_pipeline(TINY_LAYERS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- the report ------------------------------------------------------------------------------


class Report:
    def __init__(self, path: Path, plan: Plan) -> None:
        self.path = path
        device = plan.device
        self.data: dict[str, Any] = {
            "outputs_match": False,
            "complete": False,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "mode": "tiny" if plan.tiny else "full",
            "torch": torch.__version__,
            "diffusers": version("diffusers"),
            "transformers": version("transformers"),
            "dtype": "float32" if plan.tiny else "bfloat16",
            "true_cfg_scale": CFG_SCALE,
            "steps": plan.steps,
            "tolerance": {
                "metric": "relative_error = ||engine - stock|| / ||stock - mean(stock)||",
                "applies_to": "VAE input latents and VAE decoder output pixels (floats)",
                "rule": f"error <= max({LOSSLESS_REL_L2_TOLERANCE}, {SPREAD_FACTOR} * spread)",
                "spread": "stock's own error when only the transformer's attention kernel "
                f"changes ({SPREAD_KERNEL[device.type]} instead of the default), same weights "
                "and seed",
                "fast_modes": "FP8 and step-cache variants are reported against the lossless "
                "variant's output (vs_lossless), not judged by the lossless rule",
            },
            "notes": [
                "extrapolated_50_steps_s = measured total + (50 - steps) * median step time; "
                "for a step cache the median step is a full or a skipped one, so its 50-step "
                "figure is rougher than the others",
                "every variant is built again from the same seed: the same weights",
                "throughput rows call the pipeline with a batch of equal-length prompts (no "
                "text mask)",
                "queue rows: queue_jobs jobs of one size sent at once to the worker's JobQueue, "
                "prompts of three lengths (batches pad and mask), batch_max_images per call; "
                "each after an untimed one-step pass that forms the same batches (compiles, "
                "graph captures); engine_busy_fraction = time inside Engine.generate_batch / "
                "wall time; gpu_utilisation_nvml = mean of NVML's kernel-running samples; "
                "pixels_vs_batch_1 = the largest relative_error of a job's PNG against its PNG "
                "from batch_max_images 1, judged by the lossless rule",
                "probe: the transformer forward alone (no mask, equal text lengths), batch 1 "
                "and 2; step_minus_two_forwards_s bounds what a graph of the whole step could "
                "save, batched_cfg_saving_s what cond+uncond in one forward could",
                "edit: QwenImageEditPlusPipeline, one input picture of the output's size, stock "
                "against the EditEngine with the lossless variant's levers (after that "
                "variant, on a fresh build), compared by the same rule; full size: the "
                "generation model's transformer and VAE, a 1-layer text encoder of the real "
                "width with a tiny vision tower; image_tokens counts the picture's",
            ],
            "variant_names": [variant.name for variant in plan.variants],
            "rows": [],
            "variants": [],
            "throughput": [],
            "queue": [],
            "errors": [],
            "skipped": [],
        }

    def write(self) -> None:
        """Judged at every write, so a run cut off by its time limit keeps its verdict on
        what it measured (`complete` stays false)."""
        data = self.data
        lossless_rows = [
            row for entry in data["variants"] if entry["lossless"] for row in entry["rows"]
        ]
        # The edit row counts once judged (a run cut off before its engine keeps its verdict).
        edit = [data["edit"]] if "match" in data.get("edit", {}) else []
        data["outputs_match"] = bool(data["rows"]) and all(
            row.get("match") is True for row in data["rows"] + lossless_rows + data["queue"] + edit
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            log(f"{name} failed: {exc!r}")
            self.data["errors"].append(
                {"section": name, "error": repr(exc), "trace": traceback.format_exc()[-2000:]}
            )
            gc.collect()  # after an out-of-memory, let the next section have the memory
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        finally:
            self.write()


def log(message: str) -> None:
    print(message, flush=True)


# --- the run ---------------------------------------------------------------------------------


def label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def stock_call(pipe: Any, size: tuple[int, int], steps: int, marks: Marks, **inputs: Any) -> None:
    """Exactly what the engine asks of the pipeline, called on stock diffusers; `inputs`
    (an edit's picture and prompt) replace the generation's prompt."""
    pipe(
        **({"prompt": PROMPT} | inputs),
        negative_prompt=NEGATIVE,
        true_cfg_scale=CFG_SCALE,
        width=size[0],
        height=size[1],
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="pil",
        callback_on_step_end=marks.callback,
    )


@contextmanager
def transformer_attention(pipe: Any, backend: SDPBackend) -> Iterator[None]:
    """Only the transformer's SDPA restricted to `backend`. Around the whole call it also
    bound the text encoder's masked SDPA, which has no efficient kernel at full size (round
    1: 'No available kernel')."""
    transformer = pipe.transformer
    if "forward" in vars(transformer):
        raise RuntimeError("the transformer's forward is already wrapped")
    stock = transformer.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backend):
            return stock(*args, **kwargs)

    transformer.forward = forward
    try:
        yield
    finally:
        del transformer.forward


def batch_call(pipe: Any, size: tuple[int, int], batch: int, steps: int, marks: Marks) -> None:
    """`batch` jobs of one shape in one call: equal-length prompts, one seed each."""
    with torch.inference_mode():
        pipe(
            prompt=[f"{PROMPT}, take {i:02d}" for i in range(batch)],
            negative_prompt=[NEGATIVE] * batch,
            true_cfg_scale=CFG_SCALE,
            width=size[0],
            height=size[1],
            num_inference_steps=steps,
            generator=[torch.Generator("cpu").manual_seed(SEED + i) for i in range(batch)],
            output_type="pil",
            callback_on_step_end=marks.callback,
        )


def job_spec(size: tuple[int, int], steps: int, prompt: str = PROMPT) -> ImageSpec:
    return ImageSpec(
        prompt=prompt,
        negative_prompt="",
        width=size[0],
        height=size[1],
        num_inference_steps=steps,
        guidance_scale=CFG_SCALE,
        seed=SEED,
    )


def find_row(
    rows: list[dict[str, Any]], size: tuple[int, int], batch: int | None = None
) -> dict[str, Any]:
    for row in rows:
        if row["size"] == label(size) and row.get("batch") == batch:
            return row
    row = {"size": label(size)} | ({} if batch is None else {"batch": batch})
    rows.append(row)
    return row


class TimedEngine(Engine):
    """The real engine, adding up the calls and the time its GPU thread spends generating."""

    busy_s = 0.0
    calls = 0

    def generate_batch(
        self,
        specs: Sequence[ImageSpec],
        should_stop: Callable[[], bool],
        on_preview: OnPreview | None = None,
    ) -> list[Image.Image]:
        started = time.perf_counter()
        self.calls += 1
        try:
            return super().generate_batch(specs, should_stop, on_preview)
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.busy_s += time.perf_counter() - started


Outputs = tuple[torch.Tensor, torch.Tensor]  # VAE input latents, VAE output pixels
OUTPUTS = ("latents", "pixels")


class Bench:
    """One run: build, every stock measurement, then each variant on a fresh build."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan = plan
        self.clock = Clock(plan.device)
        self.marks = Marks(self.clock)
        self.report = Report(out, plan)
        self.data = self.report.data
        self.stock: dict[str, Outputs] = {}
        self.stock_edit_outputs: Outputs | None = None
        # The lossless variant's outputs and timing per size: the fast modes' reference.
        self.lossless: dict[str, tuple[Outputs, dict[str, Any]]] = {}
        # Sizes whose attention was timed alone with each kernel (once, in the first profile).
        self.attention_timed: set[str] = set()
        self.done = Accelerated()
        self.pipe: Any = None
        self.capture: Capture  # set by build()
        self.engine: Engine  # set by run_variant()
        self.compile_mode = "default"

    def run(self) -> dict[str, Any]:
        with self.report.section("build"):
            self.build()
        edit_size = self.plan.edit_size
        if self.pipe is not None:
            self.stock_rows()
            if self.plan.throughput:
                self.throughput("stock")
            if edit_size is not None and not self.over_budget("stock edit"):
                with self.report.section("stock edit"):
                    self.stock_edit(edit_size)
            self.data["max_memory_gib_stock"] = self.peak()
        for variant in self.plan.variants:
            if not self.stock or self.over_budget(f"variant {variant.name}"):
                continue
            with self.report.section(f"variant {variant.name}"):
                self.run_variant(variant)
            edited = self.stock_edit_outputs is not None and edit_size is not None
            if variant.name == "lossless" and edited and not self.over_budget("engine edit"):
                with self.report.section("engine edit"):
                    self.engine_edit(variant)
        self.finish()
        return self.data

    def finish(self) -> None:
        self.data["complete"] = not self.data["errors"] and not self.data["skipped"]
        self.data["elapsed_s"] = round(self.clock.elapsed(), 1)
        self.report.write()

    def build(self) -> None:
        """The model, from the same seed every time, with the output capture hooked in."""
        plan = self.plan
        self.release()
        log(f"building the {'demo' if plan.tiny else 'full-size'} model on {plan.device}")
        started = time.perf_counter()
        pipe = build_tiny_pipeline() if plan.tiny else build_full_pipeline(plan.device)
        self.data["build_s"] = round(time.perf_counter() - started, 2)
        self.data["text_tokens"] = {
            "prompt": text_tokens(pipe, PROMPT),
            "negative": text_tokens(pipe, NEGATIVE),
        }
        self.data["text_encoder"] = (
            f"demo model's ({TINY_LAYERS} blocks)"
            if plan.tiny
            else f"Qwen2.5-VL, 1 layer, width {TEXT_WIDTH}, random"
        )
        self.capture = Capture(pipe)
        self.pipe = pipe
        log(f"built in {self.data['build_s']} s")

    def release(self) -> None:
        """Drop the last build (weights, graphs) before the next: one copy at a time."""
        if self.pipe is None:
            return
        self.pipe = None
        self.done = Accelerated()
        vars(self).pop("engine", None)
        gc.collect()
        if self.plan.device.type != "cuda":
            return
        torch.cuda.empty_cache()
        held = torch.cuda.memory_allocated() / 2**30
        if held > 4:
            # Something (compiled code's guards?) still holds the weights: drop it all.
            log(f"{held:.1f} GiB still allocated after release: resetting dynamo")
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            self.data.setdefault("dynamo_resets", []).append(round(held, 1))

    def stock_rows(self) -> None:
        for size in self.plan.sizes:
            if self.over_budget(f"stock {label(size)}"):
                return
            row = find_row(self.data["rows"], size)
            with self.report.section(f"stock {label(size)}"):
                with self.marks.timing(2):
                    stock_call(self.pipe, size, 2, self.marks)  # untimed warm-up at this shape
                with self.marks.timing(self.plan.steps) as timed:
                    stock_call(self.pipe, size, self.plan.steps, self.marks)
                self.stock[label(size)] = self.capture.take()
                row["stock"] = timed
                log(f"stock {label(size)}: {timed}")
            if self.plan.spread and label(size) in self.stock:
                with self.report.section(f"stock spread {label(size)}"):
                    row["stock_spread"] = self.spread(
                        self.pipe,
                        partial(stock_call, self.pipe, size, self.plan.steps, self.marks),
                        self.capture,
                        self.stock[label(size)],
                    )
                    log(f"stock spread {label(size)}: {row['stock_spread']}")

    def spread(
        self, pipe: Any, call: Callable[[], None], capture: Capture, reference: Outputs
    ) -> dict[str, Any]:
        """`call` on stock again, another exact attention kernel in `pipe`'s transformer: how
        far stock moves by itself."""
        kernel = SPREAD_KERNEL[self.plan.device.type]
        backend = SDPBackend.EFFICIENT_ATTENTION if kernel == "efficient" else SDPBackend.MATH
        with transformer_attention(pipe, backend):
            call()
        latents, pixels = capture.take()
        return {
            "kernel": kernel,
            "latents": round(relative_error(latents, reference[0]), 6),
            "pixels": round(relative_error(pixels, reference[1]), 6),
        }

    def editor(self) -> tuple[QwenImageEditPlusPipeline, Capture]:
        """The edit row's pipeline and the capture of its outputs; in the full run it holds
        the current build's transformer and VAE, whose capture is the generation's."""
        if self.plan.tiny:
            editor = build_tiny_edit_pipeline()
            return editor, Capture(editor)
        return build_full_edit_pipeline(self.pipe), self.capture

    def stock_edit(self, size: tuple[int, int]) -> None:
        """Stock QwenImageEditPlusPipeline: an untimed warm-up edit, a timed one, and its
        spread, as for the generation rows."""
        steps = self.plan.steps
        picture = edit_picture(size)
        inputs = {"image": picture, "prompt": EDIT_PROMPT}
        edit = self.data["edit"] = {
            "size": label(size),
            "pictures": [label(picture.size)],
            "image_tokens": edit_tokens(size, picture),
        }
        editor, capture = self.editor()
        edit["prompt_tokens"] = text_tokens(editor, EDIT_PROMPT)
        with self.marks.timing(2):
            stock_call(editor, size, 2, self.marks, **inputs)
        with self.marks.timing(steps) as timed:
            stock_call(editor, size, steps, self.marks, **inputs)
        self.stock_edit_outputs = reference = capture.take()
        edit["stock"] = timed
        log(f"stock edit {label(size)}: {timed}")
        if self.plan.spread:
            edit["stock_spread"] = self.spread(
                editor,
                lambda: stock_call(editor, size, steps, self.marks, **inputs),
                capture,
                reference,
            )
            log(f"stock edit spread {label(size)}: {edit['stock_spread']}")

    def engine_edit(self, variant: Variant) -> None:
        """The worker's EditEngine on a fresh build: `variant`'s levers pulled on the editor
        (`accelerate`, as a worker does), its start-up warm-up at the edit's size, then a
        first edit (a new prompt: captures) and the timed one, compared with stock's."""
        plan = self.plan
        size, reference = plan.edit_size, self.stock_edit_outputs
        assert size is not None and reference is not None
        edit = self.data["edit"]
        settings = WorkerSettings(**variant.settings)
        self.build()
        editor, capture = self.editor()
        started = time.perf_counter()
        done = accelerate(editor, Levers.from_settings(settings), allow_cpu=plan.tiny)
        edit["accelerate_s"] = round(time.perf_counter() - started, 2)
        edit["levers"] = done.active
        engine = EditEngine(
            editor,
            on_step=self.marks.on_step,
            warmup_sizes=[size],
            batch=batch_limit(settings, done),
        )
        started = time.perf_counter()
        warmed = engine.warm_up(replace(job_spec(size, 2), prompt="warm-up"))
        edit["startup_warmup"] = {
            "sizes": [label(made) for made in warmed],
            "steps": 2,
            "seconds": round(time.perf_counter() - started, 2),
        }
        job = replace(job_spec(size, plan.steps, EDIT_PROMPT), pictures=(edit_picture(size),))
        with self.marks.timing(1) as first:
            engine.generate(replace(job, num_inference_steps=1), lambda: False)
        replays = self.graph_replays(done)
        joined = 0 if done.paired is None else done.paired.joined
        with self.marks.timing(plan.steps) as timed:
            engine.generate(job, lambda: False)
        outputs = capture.take()
        edit["engine"] = timed | {
            "first_call_s": first["total_s"],
            "graph_replays": self.graph_replays(done) - replays,
            "cfg_joined_steps": (0 if done.paired is None else done.paired.joined) - joined,
        }
        edit["max_memory_gib"] = self.peak()
        compare(edit, reference, outputs)
        log(f"engine edit {label(size)}: {edit}")

    def run_variant(self, variant: Variant) -> None:
        plan = self.plan
        settings = WorkerSettings(**variant.settings)
        if settings.compile_mode != self.compile_mode and plan.device.type == "cuda":
            # Compiled blocks of another mode must not be reused: start dynamo afresh.
            torch._dynamo.reset()
            self.compile_mode = settings.compile_mode
        self.build()
        self.peak()  # from here on, this variant's peak
        entry: dict[str, Any] = {
            "name": variant.name,
            "lossless": variant.lossless,
            "note": variant.note,
            "settings": variant.settings,
            "rows": [],
        }
        self.data["variants"].append(entry)
        started = time.perf_counter()
        self.done = accelerate(self.pipe, Levers.from_settings(settings), allow_cpu=plan.tiny)
        entry["accelerate_s"] = round(time.perf_counter() - started, 2)
        entry["levers"] = self.done.active
        if self.done.fp8 is not None:
            entry["fp8"] = asdict(self.done.fp8)
        sizes = list(variant.sizes) or plan.sizes
        warmup_sizes = list(variant.sizes) or plan.warmup_sizes
        entry["sizes"] = [label(size) for size in sizes]
        # The worker's own batch limit, so the start-up warm-up is the worker's (with its
        # batch of two when batching is on).
        self.engine = Engine(
            self.pipe,
            on_step=self.marks.on_step,
            warmup_sizes=warmup_sizes,
            batch=batch_limit(settings, self.done),
        )
        started = time.perf_counter()
        base = replace(job_spec(warmup_sizes[0], 2), prompt="warm-up")
        warmed = self.engine.warm_up(base)
        entry["startup_warmup"] = {
            "sizes": [label(size) for size in warmed],
            "steps": 2,
            "seconds": round(time.perf_counter() - started, 2),
        }
        log(f"variant {variant.name}: {self.done.active}; warm-up {entry['startup_warmup']}")
        if variant.name == "lossless":
            self.data["levers"] = self.done.active
            self.data["startup_warmup"] = entry["startup_warmup"]
        for size in sizes:
            if label(size) not in self.stock or self.over_budget(f"{variant.name} {label(size)}"):
                continue
            with self.report.section(f"{variant.name} {label(size)}"):
                entry["rows"].append(self.variant_row(variant, size))
        if self.done.forward is not None:
            entry["graphs"] = vars(self.done.forward.stats)
        entry["max_memory_gib"] = self.peak()
        if variant.name == "lossless":
            self.after_lossless()

    def variant_row(self, variant: Variant, size: tuple[int, int]) -> dict[str, Any]:
        replays = self.graph_replays()
        cache = self.done.step_cache
        with self.marks.timing(1) as first:  # a new prompt length: graph capture
            self.engine.generate(job_spec(size, 1), lambda: False)
        before = replace(cache.stats) if cache is not None else None
        with self.marks.timing(self.plan.steps) as timed:
            self.engine.generate(job_spec(size, self.plan.steps), lambda: False)
        outputs = self.capture.take()
        row: dict[str, Any] = {
            "size": label(size),
            **timed,
            "first_call_s": first["total_s"],
            "graph_replays": self.graph_replays() - replays,
        }
        if cache is not None and before is not None:
            computed = cache.stats.computed - before.computed
            skipped = cache.stats.skipped - before.skipped
            row["step_cache"] = {
                "computed": computed,
                "skipped": skipped,
                "skipped_fraction": round(skipped / max(1, computed + skipped), 3),
            }
        stock_row = find_row(self.data["rows"], size)
        row["vs_stock"] = deviation(outputs, self.stock[label(size)])
        row["vs_stock"]["speedup"] = speedup(stock_row["stock"], timed)
        if variant.lossless:
            spread = stock_row.get("stock_spread", {})
            tolerance = {name: lossless_tolerance(spread.get(name, 0.0)) for name in OUTPUTS}
            row["tolerance"] = {name: round(value, 6) for name, value in tolerance.items()}
            row["match"] = all(row["vs_stock"][name] <= tolerance[name] for name in OUTPUTS)
        if variant.name == "lossless":
            self.lossless[label(size)] = (outputs, timed)
            stock_row["engine"] = timed | {
                "first_call_s": row["first_call_s"],
                "graph_replays": row["graph_replays"],
            }
            compare(stock_row, self.stock[label(size)], outputs)
            if self.plan.probe and self.graphed(size):
                row["probe"] = self.probe(size, timed["median_step_s"])
        elif label(size) in self.lossless:
            reference, reference_timed = self.lossless[label(size)]
            row["vs_lossless"] = deviation(outputs, reference)
            row["vs_lossless"]["speedup"] = speedup(reference_timed, timed)
        if variant.profiled and self.plan.profile and row["graph_replays"] == 0:
            row["profile"] = self.profile(size, f"{variant.name} {label(size)}")
        log(f"{variant.name} {label(size)}: {row}")
        return row

    def after_lossless(self) -> None:
        """The default engine's images/s by batch size, and under a full queue."""
        if self.plan.throughput:
            self.throughput("engine")
        if self.plan.queue:
            self.full_queues()
        if self.done.forward is not None:
            self.data["graphs"] = vars(self.done.forward.stats)
        self.data["max_memory_gib_engine"] = self.peak()

    def graphed(self, size: tuple[int, int]) -> bool:
        """Sizes the default engine replays as CUDA graphs (on the CPU: the same sizes)."""
        return size[0] * size[1] <= WorkerSettings().cuda_graph_max_pixels

    def forward_kwargs(self, size: tuple[int, int], batch: int) -> dict[str, Any]:
        """One transformer forward's inputs: random latents and text of the prompt's length,
        no mask (equal text lengths)."""
        transformer = self.pipe.transformer
        config = transformer.config
        dtype = transformer.dtype
        device = self.plan.device
        rows, cols = size[1] // 16, size[0] // 16
        text = self.data["text_tokens"]["prompt"]
        noise = torch.Generator("cpu").manual_seed(SEED)
        return {
            "hidden_states": torch.randn(
                batch, rows * cols, config.in_channels, generator=noise
            ).to(device, dtype),
            "encoder_hidden_states": torch.randn(
                batch, text, config.joint_attention_dim, generator=noise
            ).to(device, dtype),
            "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
            "img_shapes": [[(1, rows, cols)]] * batch,
            "return_dict": False,
        }

    def probe(self, size: tuple[int, int], step_s: float | None) -> dict[str, Any]:
        """The transformer forward alone, batch 1 and 2, no mask, equal text lengths; and one
        block's attention as CFG's joined forward runs it (masked) with each kernel."""
        transformer = self.pipe.transformer
        runs = PROBE_RUNS[self.plan.device.type]
        result: dict[str, Any] = {"runs": runs}
        for batch in (1, 2):
            kwargs = self.forward_kwargs(size, batch)
            with torch.inference_mode():
                for _ in range(3):
                    transformer(**kwargs)
                start = self.clock.now()
                for _ in range(runs):
                    transformer(**kwargs)
                result[f"forward_b{batch}_s"] = round((self.clock.now() - start) / runs, 5)
        one, two = result["forward_b1_s"], result["forward_b2_s"]
        result["batched_cfg_saving_s"] = round(2 * one - two, 5)
        if step_s is not None:
            result["step_minus_two_forwards_s"] = round(step_s - 2 * one, 5)
        prompt, negative = self.data["text_tokens"]["prompt"], self.data["text_tokens"]["negative"]
        result["masked_attention"] = masked_attention(
            transformer.config,
            max(prompt, negative),
            kwargs["hidden_states"].shape[1],
            abs(prompt - negative),
            self.plan.device,
            transformer.dtype,
            runs,
        )
        log(f"probe {label(size)}: {result}")
        return result

    def profile(self, size: tuple[int, int], what: str) -> dict[str, Any]:
        """One forward (batch 1, the prompt's text) split by kind of kernel, beside its FLOPs
        and its wall time (busy_fraction: kernel time / wall time; under 1, the GPU waits
        for the host). The first profile of a size also times its attention alone with
        each SDPA kernel, FlexAttention and FA3."""
        transformer = self.pipe.transformer
        kwargs = self.forward_kwargs(size, 1)
        image_tokens = kwargs["hidden_states"].shape[1]
        text_tokens = kwargs["encoder_hidden_states"].shape[1]
        flops = forward_flops(transformer.config, 1, image_tokens, text_tokens)
        with torch.inference_mode():
            transformer(**kwargs)  # the row's runs compiled this shape; this warms the text
            start = self.clock.now()
            for _ in range(PROFILE_RUNS):
                transformer(**kwargs)
            wall = (self.clock.now() - start) / PROFILE_RUNS
            result = profile_forward(
                lambda: transformer(**kwargs), flops, self.plan.device, PROFILE_RUNS
            )
        result["wall_s"] = round(wall, 6)
        result["busy_fraction"] = round(result["total_s"] / wall, 3)
        if label(size) not in self.attention_timed:
            self.attention_timed.add(label(size))
            result["attention_backends"] = attention_backends(
                transformer.config,
                image_tokens + text_tokens,
                self.plan.device,
                transformer.dtype,
                PROFILE_RUNS,
            )
        log(f"profile {what}: {result['kinds']}; {result.get('attention_backends')}")
        return result

    def throughput(self, side: str) -> None:
        plan = self.plan
        for size in plan.batch_sizes:
            for batch in plan.batches:
                what = f"throughput {side} {label(size)} b{batch}"
                if self.over_budget(what):
                    return
                with self.report.section(what):
                    with self.marks.timing(1, batch) as first:  # compiles/captures a new batch
                        batch_call(self.pipe, size, batch, 1, self.marks)
                    with self.marks.timing(plan.batch_steps, batch) as timed:
                        batch_call(self.pipe, size, batch, plan.batch_steps, self.marks)
                    row = find_row(self.data["throughput"], size, batch)
                    row[side] = timed | {"first_call_s": first["total_s"]}
                    log(f"{what}: {timed}")

    def full_queues(self) -> None:
        """The worker's real JobQueue over the real engine, `queue_jobs` jobs sent at once, per
        size and batch limit: images/s, the engine's busy fraction, and each job's picture
        against the one it got one image at a time (batch limit 1, the first row)."""
        plan = self.plan
        self.data["queue"] = []
        for size in plan.batch_sizes:
            alone: tuple[dict[str, Any], list[torch.Tensor]] | None = None
            for limit in plan.batches:
                what = f"queue {label(size)} batch {limit}"
                if self.over_budget(what):
                    return
                with self.report.section(what):
                    # Untimed: the same jobs at one step form the same batches, so graph
                    # captures and compiles of new batch shapes happen here.
                    asyncio.run(self.full_queue(size, limit, 1))
                    row, pixels = asyncio.run(self.full_queue(size, limit, plan.queue_steps))
                    if limit == 1:
                        alone = (row, pixels)
                    if alone is not None:
                        self.compare_queue(row, size, pixels, *alone)
                    self.data["queue"].append(row)
                    log(f"{what}: {row}")

    def compare_queue(
        self,
        row: dict[str, Any],
        size: tuple[int, int],
        pixels: list[torch.Tensor],
        first: dict[str, Any],
        alone: list[torch.Tensor],
    ) -> None:
        row["speedup_vs_batch_1"] = round(row["images_per_s"] / first["images_per_s"], 3)
        # Stock's spread where this size has a row; the floor elsewhere.
        spread = next(
            (r.get("stock_spread", {}) for r in self.data["rows"] if r["size"] == label(size)),
            {},
        )
        tolerance = lossless_tolerance(spread.get("pixels", 0.0))
        error = max(
            relative_error(ours, theirs) for ours, theirs in zip(pixels, alone, strict=True)
        )
        row["pixels_vs_batch_1"] = round(error, 6)
        row["tolerance"] = round(tolerance, 6)
        row["match"] = error <= tolerance

    async def full_queue(
        self, size: tuple[int, int], limit: int, steps: int
    ) -> tuple[dict[str, Any], list[torch.Tensor]]:
        plan = self.plan
        engine = TimedEngine(self.pipe, batch=BatchLimit(max_images=limit, max_pixels=1 << 40))
        queue = JobQueue(plan.queue_jobs - 1, WorkerMetrics())
        await queue.start(lambda: engine, job_spec(size, 1))
        engine.busy_s, engine.calls = 0.0, 0  # not the warm-up image
        start_sampling, stop_sampling = gpu_utilisation_sampler()
        if plan.device.type == "cuda":
            start_sampling()
        started = time.perf_counter()
        jobs = [queue.submit(queued_job(size, steps, i)) for i in range(plan.queue_jobs)]
        results = await asyncio.gather(*(job.future for job in jobs))
        wall = time.perf_counter() - started
        utilisation = stop_sampling() if plan.device.type == "cuda" else None
        await queue.stop()
        row = {
            "size": label(size),
            "batch_max_images": limit,
            "jobs": plan.queue_jobs,
            "steps": steps,
            "pipeline_calls": engine.calls,
            "wall_s": round(wall, 3),
            "images_per_s": round(plan.queue_jobs / wall, 4),
            "engine_busy_fraction": round(engine.busy_s / wall, 4),
            "gpu_utilisation_nvml": utilisation,
        }
        return row, [png_pixels(result.images[0].b64) for result in results]

    def over_budget(self, what: str) -> bool:
        if self.plan.budget_s is None or self.clock.elapsed() < self.plan.budget_s:
            return False
        self.data["skipped"].append(what)
        log(f"skipped (time budget): {what}")
        return True

    def graph_replays(self, done: Accelerated | None = None) -> int:
        """CUDA graph replays so far of `done`'s forward (default: the current variant's)."""
        forward = (done or self.done).forward
        return 0 if forward is None else forward.stats.replayed

    def peak(self) -> float | None:
        """The most GPU memory held since the last call, in GiB."""
        if self.plan.device.type != "cuda":
            return None
        gib = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return round(gib, 1)


def queued_job(size: tuple[int, int], steps: int, index: int) -> JobRequest:
    """Prompts of three lengths, as users send them: batches pad and mask the shorter ones."""
    return JobRequest(
        job_id=f"bench-{index}",
        prompt=f"{PROMPT}, take {index:02d}" + ", again" * (index % 3),
        width=size[0],
        height=size[1],
        num_inference_steps=steps,
        guidance_scale=CFG_SCALE,
        seeds=[SEED + index],
        timeout_seconds=3600,
    )


def png_pixels(png_b64: str) -> torch.Tensor:
    with Image.open(io.BytesIO(base64.b64decode(png_b64))) as image:
        return torch.from_numpy(np.asarray(image, dtype=np.float64))


def deviation(value: Outputs, reference: Outputs) -> dict[str, Any]:
    return {
        name: round(relative_error(value[index], reference[index]), 6)
        for index, name in enumerate(OUTPUTS)
    }


def speedup(reference: dict[str, Any], timed: dict[str, Any]) -> float:
    """At 50 steps where extrapolated, else as measured."""
    before = reference["extrapolated_50_steps_s"] or reference["total_s"]
    after = timed["extrapolated_50_steps_s"] or timed["total_s"]
    return round(before / after, 3)


def compare(row: dict[str, Any], stock: Outputs, engine: Outputs) -> None:
    """Errors against stock, each within its tolerance (the floor, or 3x stock's spread)."""
    spread = row.get("stock_spread", {})
    row["tolerance"] = {}
    row["match"] = True
    for index, name in enumerate(OUTPUTS):
        error = relative_error(engine[index], stock[index])
        tolerance = lossless_tolerance(spread.get(name, 0.0))
        row[f"{name}_rel_error"] = round(error, 6)
        row["tolerance"][name] = round(tolerance, 6)
        row["match"] = row["match"] and error <= tolerance
    row["speedup"] = speedup(row["stock"], row["engine"])


def main(argv: list[str] | None = None) -> int:
    plan, out = parse_args(sys.argv[1:] if argv is None else argv)
    if plan.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    data = Bench(plan, out).run()
    log(table(data))
    return 0 if data["outputs_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
