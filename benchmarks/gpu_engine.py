"""Stock diffusers against the worker's engine, back to back on one GPU, same random weights.

Builds Qwen-Image's full-size transformer (60 blocks, 20B parameters) and VAE with random
weights, directly on the GPU (no download; the same arithmetic as the real model), plus a
text encoder of the real width (3584) but one layer and a byte-level tokenizer: text
encoding is not what is timed, and this one keeps prompts real strings of real length.

Order (one copy of the weights, so it fits an 80 GB card): every stock measurement first,
then the levers are pulled on the same modules (`accelerate`, then the worker's start-up
warm-up of every served size, timed), then the engine's. Per size: an untimed warm-up call,
then a timed one at --steps, true CFG 4.0, the same seed for both. Both sides' outputs are
captured inside the VAE (latents in, pixels out, as floats) and compared by `relative_error`
within `lossless_tolerance` (acceleration.py), whose spread is stock run once more under
another exact attention kernel. Then images per second by batch size (one pipeline call per
batch of equal-length prompts), and the real JobQueue under a full queue (busy fraction).

  python benchmarks/gpu_engine.py --out report.json             # full size, CUDA, 50 steps
  python benchmarks/gpu_engine.py --steps 20 --budget-s 300 ... # fewer steps, extrapolated
  python benchmarks/gpu_engine.py --tiny --out report.json      # demo model on the CPU, <1 min

The JSON report is rewritten after every section, so a run cut short leaves what it measured.
The levers are read from the environment like the worker's (WorkerSettings: FUSE_QKV=false,
CUDA_GRAPH_MAX_PIXELS=0, ...). --tiny pulls only the levers that run on a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from report_table import table
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from qwen_image_common.contract import JobRequest
from qwen_image_worker.engine.acceleration import (
    LOSSLESS_REL_L2_TOLERANCE,
    SPREAD_FACTOR,
    Accelerated,
    Levers,
    accelerate,
    lossless_tolerance,
    relative_error,
)
from qwen_image_worker.engine.demo_model import build_demo_pipeline
from qwen_image_worker.engine.generation import Engine, ImageSpec
from qwen_image_worker.engine.loading import load_pipeline
from qwen_image_worker.metrics import WorkerMetrics
from qwen_image_worker.queue import JobQueue
from qwen_image_worker.settings import WorkerSettings, parse_sizes

PROMPT = "a lighthouse on a cliff at dusk, waves breaking below, long exposure, 35 mm photograph"
NEGATIVE = " "  # what the engine sends for an empty negative prompt
CFG_SCALE = 4.0
SEED = 1234
FULL_STEPS = 50
FULL_SIZES = "1328x1328,1024x1024,512x512"
TEXT_WIDTH = 3584
# The other exact attention kernel that measures stock's own spread (default: flash or cuDNN).
SPREAD_KERNEL = {"cuda": "efficient", "cpu": "math"}
# Qwen-Image's scheduler (its scheduler/scheduler_config.json).
SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
}
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
class Plan:
    tiny: bool
    device: torch.device
    steps: int
    sizes: list[tuple[int, int]]
    batch_sizes: list[tuple[int, int]]
    batches: list[int]
    batch_steps: int
    queue_size: tuple[int, int]
    queue_jobs: int
    queue_steps: int
    warmup_sizes: list[tuple[int, int]]
    budget_s: float | None
    spread: bool


def parse_args(argv: list[str]) -> tuple[Plan, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="demo model on the CPU, tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("gpu_engine.json"))
    parser.add_argument("--steps", type=int, help="denoising steps of the timed runs")
    parser.add_argument("--sizes", help="WxH,... of the stock-vs-engine rows")
    parser.add_argument("--batch-sizes", help="WxH,... of the throughput-by-batch runs")
    parser.add_argument("--batches", help="batch sizes, e.g. 1,2,4,8")
    parser.add_argument("--batch-steps", type=int, help="steps of each throughput run")
    parser.add_argument("--queue-jobs", type=int, help="jobs sent at once to the real JobQueue")
    parser.add_argument("--queue-steps", type=int, help="steps of each queued job")
    parser.add_argument("--warmup-sizes", help="sizes of the start-up warm-up (WARMUP_SIZES)")
    parser.add_argument(
        "--no-spread",
        action="store_true",
        help="skip stock's second run under another attention kernel (tolerance: the floor)",
    )
    parser.add_argument(
        "--budget-s", type=float, help="skip sections that would start after this many seconds"
    )
    args = parser.parse_args(argv)
    tiny = args.tiny
    plan = Plan(
        tiny=tiny,
        device=torch.device("cpu" if tiny else "cuda"),
        steps=args.steps or (3 if tiny else FULL_STEPS),
        sizes=parse_sizes(args.sizes or ("256x256,128x128" if tiny else FULL_SIZES)),
        batch_sizes=parse_sizes(args.batch_sizes or ("128x128" if tiny else "512x512,256x256")),
        batches=[int(b) for b in (args.batches or ("1,2" if tiny else "1,2,4,8")).split(",")],
        batch_steps=args.batch_steps or (2 if tiny else 8),
        queue_size=(64, 64) if tiny else (512, 512),
        queue_jobs=args.queue_jobs or (3 if tiny else 8),
        queue_steps=args.queue_steps or (2 if tiny else 10),
        warmup_sizes=parse_sizes(
            args.warmup_sizes or ("64x64,96x64" if tiny else WorkerSettings().warmup_sizes)
        ),
        budget_s=args.budget_s,
        spread=not args.no_spread,
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

    def __init__(self, pipe: QwenImagePipeline) -> None:
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
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_config(tokenizer: Any) -> Qwen2_5_VLConfig:
    """One decoder layer of Qwen2.5-VL's real width: real prompt lengths, negligible cost."""
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
    )


def text_tokens(pipe: Any, prompt: str) -> int:
    """Tokens the transformer sees for `prompt`: the template's, less the dropped prefix."""
    ids = pipe.tokenizer(pipe.prompt_template_encode.format(prompt))["input_ids"]
    return len(ids) - pipe.prompt_template_encode_start_idx


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
                "spread": "stock's own error when only its attention kernel changes "
                f"({SPREAD_KERNEL[device.type]} instead of the default), same weights and seed",
            },
            "notes": [
                "extrapolated_50_steps_s = measured total + (50 - steps) * median step time",
                "throughput rows call the pipeline with a batch of equal-length prompts (no "
                "text mask); the worker's queue runs one image per pipeline call today",
                "queue.engine_busy_fraction = time inside Engine.generate / wall time; "
                "queue.gpu_utilisation_nvml = mean of NVML's kernel-running samples",
            ],
            "rows": [],
            "throughput": [],
            "errors": [],
            "skipped": [],
        }

    def write(self) -> None:
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


def stock_call(pipe: Any, size: tuple[int, int], steps: int, marks: Marks) -> None:
    """Exactly what the engine asks of the pipeline, called on stock diffusers."""
    pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        true_cfg_scale=CFG_SCALE,
        width=size[0],
        height=size[1],
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="pil",
        callback_on_step_end=marks.callback,
    )


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
    """The real engine, adding up the time its GPU thread spends generating."""

    busy_s = 0.0

    def generate(self, spec: ImageSpec, should_stop: Callable[[], bool]) -> Any:
        started = time.perf_counter()
        try:
            return super().generate(spec, should_stop)
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.busy_s += time.perf_counter() - started


class Bench:
    """One run: build, every stock measurement, the levers, every engine measurement."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan = plan
        self.clock = Clock(plan.device)
        self.marks = Marks(self.clock)
        self.report = Report(out, plan)
        self.data = self.report.data
        self.stock: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.done = Accelerated()
        self.pipe: Any = None
        self.capture: Capture  # set by build()
        self.engine: Engine  # set by accelerate()

    def run(self) -> dict[str, Any]:
        with self.report.section("build"):
            self.build()
        if self.pipe is not None:
            self.stock_rows()
            self.throughput("stock")
            self.peak("stock")
            if not self.over_budget("accelerate"):
                with self.report.section("accelerate"):
                    self.accelerate()
        if "levers" in self.data:
            self.engine_rows()
            self.throughput("engine")
            if not self.over_budget("queue"):
                with self.report.section("queue"):
                    self.data["queue"] = asyncio.run(self.full_queue())
                    log(f"queue: {self.data['queue']}")
            if self.done.forward is not None:
                self.data["graphs"] = vars(self.done.forward.stats)
            self.peak("engine")
        rows = self.data["rows"]
        self.data["outputs_match"] = bool(rows) and all(row.get("match") is True for row in rows)
        self.data["complete"] = not self.data["errors"] and not self.data["skipped"]
        self.data["elapsed_s"] = round(self.clock.elapsed(), 1)
        self.report.write()
        return self.data

    def build(self) -> None:
        plan = self.plan
        log(f"building the {'demo' if plan.tiny else 'full-size'} model on {plan.device}")
        started = time.perf_counter()
        pipe = load_pipeline(None, plan.device) if plan.tiny else build_full_pipeline(plan.device)
        self.data["build_s"] = round(time.perf_counter() - started, 2)
        self.data["text_tokens"] = {
            "prompt": text_tokens(pipe, PROMPT),
            "negative": text_tokens(pipe, NEGATIVE),
        }
        self.data["text_encoder"] = (
            "demo model's" if plan.tiny else f"Qwen2.5-VL, 1 layer, width {TEXT_WIDTH}, random"
        )
        self.capture = Capture(pipe)
        self.pipe = pipe
        log(f"built in {self.data['build_s']} s")

    def stock_rows(self) -> None:
        for size in self.plan.sizes:
            if self.over_budget(f"stock {label(size)}"):
                return
            with self.report.section(f"stock {label(size)}"):
                with self.marks.timing(2):
                    stock_call(self.pipe, size, 2, self.marks)  # untimed warm-up at this shape
                with self.marks.timing(self.plan.steps) as timed:
                    stock_call(self.pipe, size, self.plan.steps, self.marks)
                self.stock[label(size)] = self.capture.take()
                row = find_row(self.data["rows"], size)
                row["stock"] = timed
                log(f"stock {label(size)}: {timed}")
                if self.plan.spread:
                    row["stock_spread"] = self.spread(size)
                    log(f"stock spread {label(size)}: {row['stock_spread']}")

    def spread(self, size: tuple[int, int]) -> dict[str, Any]:
        """Stock again under another exact attention kernel: how far stock moves by itself."""
        kernel = SPREAD_KERNEL[self.plan.device.type]
        backend = SDPBackend.EFFICIENT_ATTENTION if kernel == "efficient" else SDPBackend.MATH
        with sdpa_kernel(backend):
            stock_call(self.pipe, size, self.plan.steps, self.marks)
        latents, pixels = self.capture.take()
        reference = self.stock[label(size)]
        return {
            "kernel": kernel,
            "latents": round(relative_error(latents, reference[0]), 6),
            "pixels": round(relative_error(pixels, reference[1]), 6),
        }

    def accelerate(self) -> None:
        plan = self.plan
        self.done = accelerate(
            self.pipe, Levers.from_settings(WorkerSettings()), allow_cpu=plan.tiny
        )
        self.data["levers"] = self.done.active
        self.engine = Engine(self.pipe, on_step=self.marks.on_step, warmup_sizes=plan.warmup_sizes)
        started = time.perf_counter()
        base = replace(job_spec(plan.warmup_sizes[0], 2), prompt="warm-up")
        warmed = self.engine.warm_up(base)
        self.data["startup_warmup"] = {
            "sizes": [label(size) for size in warmed],
            "steps": 2,
            "seconds": round(time.perf_counter() - started, 2),
        }
        log(f"levers {self.done.active}; warm-up {self.data['startup_warmup']}")

    def engine_rows(self) -> None:
        for size in self.plan.sizes:
            if label(size) not in self.stock or self.over_budget(f"engine {label(size)}"):
                continue
            with self.report.section(f"engine {label(size)}"):
                replays = self.graph_replays()
                with self.marks.timing(1) as first:  # a new prompt length: graph capture
                    self.engine.generate(job_spec(size, 1), lambda: False)
                with self.marks.timing(self.plan.steps) as timed:
                    self.engine.generate(job_spec(size, self.plan.steps), lambda: False)
                row = find_row(self.data["rows"], size)
                row["engine"] = timed | {
                    "first_call_s": first["total_s"],
                    "graph_replays": self.graph_replays() - replays,
                }
                compare(row, self.stock[label(size)], self.capture.take())
                log(f"engine {label(size)}: {row['engine']} match={row['match']}")

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

    async def full_queue(self) -> dict[str, Any]:
        """`queue_jobs` jobs sent at once to the worker's real JobQueue over the real engine."""
        plan = self.plan
        engine = TimedEngine(self.pipe)
        queue = JobQueue(plan.queue_jobs - 1, WorkerMetrics())
        await queue.start(lambda: engine, job_spec(plan.queue_size, 1))
        engine.busy_s = 0.0
        start_sampling, stop_sampling = gpu_utilisation_sampler()
        if plan.device.type == "cuda":
            start_sampling()
        started = time.perf_counter()
        jobs = [queue.submit(queued_job(plan, i)) for i in range(plan.queue_jobs)]
        await asyncio.gather(*(job.future for job in jobs))
        wall = time.perf_counter() - started
        utilisation = stop_sampling() if plan.device.type == "cuda" else None
        await queue.stop()
        return {
            "size": label(plan.queue_size),
            "jobs": plan.queue_jobs,
            "steps": plan.queue_steps,
            "wall_s": round(wall, 3),
            "images_per_s": round(plan.queue_jobs / wall, 4),
            "engine_busy_fraction": round(engine.busy_s / wall, 4),
            "gpu_utilisation_nvml": utilisation,
        }

    def over_budget(self, what: str) -> bool:
        if self.plan.budget_s is None or self.clock.elapsed() < self.plan.budget_s:
            return False
        self.data["skipped"].append(what)
        log(f"skipped (time budget): {what}")
        return True

    def graph_replays(self) -> int:
        return 0 if self.done.forward is None else self.done.forward.stats.replayed

    def peak(self, phase: str) -> None:
        if self.plan.device.type == "cuda":
            gib = torch.cuda.max_memory_allocated() / 2**30
            self.data[f"max_memory_gib_{phase}"] = round(gib, 1)
            torch.cuda.reset_peak_memory_stats()


def queued_job(plan: Plan, index: int) -> JobRequest:
    return JobRequest(
        job_id=f"bench-{index}",
        prompt=f"{PROMPT}, take {index:02d}",
        width=plan.queue_size[0],
        height=plan.queue_size[1],
        num_inference_steps=plan.queue_steps,
        guidance_scale=CFG_SCALE,
        seeds=[SEED + index],
        timeout_seconds=3600,
    )


def compare(
    row: dict[str, Any],
    stock: tuple[torch.Tensor, torch.Tensor],
    engine: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Errors against stock, each within its tolerance (the floor, or 3x stock's spread)."""
    spread = row.get("stock_spread", {})
    row["tolerance"] = {}
    row["match"] = True
    for index, name in enumerate(("latents", "pixels")):
        error = relative_error(engine[index], stock[index])
        tolerance = lossless_tolerance(spread.get(name, 0.0))
        row[f"{name}_rel_error"] = round(error, 6)
        row["tolerance"][name] = round(tolerance, 6)
        row["match"] = row["match"] and error <= tolerance
    stock_t = row["stock"]["extrapolated_50_steps_s"] or row["stock"]["total_s"]
    engine_t = row["engine"]["extrapolated_50_steps_s"] or row["engine"]["total_s"]
    row["speedup"] = round(stock_t / engine_t, 3)


def main(argv: list[str] | None = None) -> int:
    plan, out = parse_args(sys.argv[1:] if argv is None else argv)
    if plan.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    data = Bench(plan, out).run()
    log(table(data))
    return 0 if data["outputs_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
