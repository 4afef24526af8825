"""The GPU speed levers, applied to a loaded pipeline: stock diffusers' arithmetic, done faster.

They serve the text-to-image and the edit pipelines alike (one transformer class; where a
lever's choice depends on the call, an edit's picture tokens count: paired_cfg.py,
cuda_graphs.py). Every lever computes the same function as the stock pipeline; only the order of
bf16 rounding changes (see `lossless_tolerance`). Each one is chosen by WorkerSettings and can
be switched off. They act on CUDA only: on a CPU `accelerate` leaves the pipeline as it is,
unless a caller (tests, the benchmark's --tiny run) asks for the device-agnostic ones. Two
opt-in fast modes, off by default, trade exactness for speed: FP8 matmuls (fp8.py) and the
first-block step cache (step_cache.py); `accelerate` pulls them too.

Where each lever lives: joint_attention.py (fused QKV, real RoPE, FA3), feed_forward.py
(the GELU epilogue), vae.py (the VAE's), cuda_graphs.py (SDPA order, CUDA graphs),
paired_cfg.py (CFG's forwards joined), fp8.py and step_cache.py (the fast modes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import QwenImagePipeline
from torch.nn.attention import SDPBackend

from qwen_image_worker.engine.base import ONE_AT_A_TIME, BatchLimit
from qwen_image_worker.engine.cuda_graphs import AcceleratedForward
from qwen_image_worker.engine.feed_forward import use_gelu_epilogues
from qwen_image_worker.engine.fp8 import Fp8Report, quantise_blocks
from qwen_image_worker.engine.joint_attention import flash3_unavailable, install_joint_attention
from qwen_image_worker.engine.paired_cfg import PairedGuidance
from qwen_image_worker.engine.step_cache import CachedBlocks, install_step_cache
from qwen_image_worker.engine.vae import to_channels_last, use_conv2d_for_single_frames
from qwen_image_worker.settings import AttentionBackend, CompileMode, WorkerSettings

logger = logging.getLogger(__name__)

# When the levers count as lossless: the `relative_error` of the accelerated output against
# stock diffusers' (latents, and decoded pixels) is at most `lossless_tolerance(spread)`.
# bf16 keeps 8 significant bits (unit roundoff 2^-8, about 4e-3): reordering bf16 arithmetic
# (fused kernels, another attention kernel) moves one forward by about that much, and 50
# denoising steps carry it to about 1e-2, hence the floor of 3e-2. `spread` is how far stock
# diffusers moves from itself when only its attention kernel changes (another exact kernel,
# same weights and seed): random-weight models, the benchmark's and the demo, amplify rounding
# far more than trained ones (their VAE turns 0.3 % in latents into 2.5 % in pixels, measured
# on the CPU), so a lever may move the output 3x as far as that. Any real fault (a mask, a
# wrong CFG branch, a stale graph input, another seed) moves latents by O(1): two seeds' latents
# are about 1.4 apart.
LOSSLESS_REL_L2_TOLERANCE = 3e-2
SPREAD_FACTOR = 3.0


def lossless_tolerance(spread: float = 0.0) -> float:
    return max(LOSSLESS_REL_L2_TOLERANCE, SPREAD_FACTOR * spread)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference - mean(reference)||, in float64.

    Measured against the reference's spread, not its size: pixels sit around mid-grey, and a
    plain relative L2 would call two unrelated pictures close.
    """
    ref = reference.detach().to("cpu", torch.float64)
    diff = value.detach().to("cpu", torch.float64) - ref
    return float(diff.norm() / (ref - ref.mean()).norm().clamp_min(1e-30))


# Compiled variants of one block's forward that dynamo keeps. They are per code object, so
# every engine in a process adds to them (the benchmark's variants, the GPU tests' engines),
# and one engine makes about three (batch of one or more, text mask or none); with
# fullgraph=True a hit of the default 8 would fail the request instead of running eager.
_RECOMPILE_LIMIT = 64
# torch._scaled_mm's e4m3 matmuls: Ada (8.9), Hopper (9.0) and newer.
_FP8_CAPABILITY = (8, 9)

_CUDNN_FIRST = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]
_SDPA_ORDER: dict[str, list[SDPBackend]] = {
    "cudnn": _CUDNN_FIRST,
    # FA3 takes the unmasked joint attention (joint_attention.py), and the masked with
    # FLASH3_PADDED_BATCHES; SDPA, cuDNN first, what is left.
    "flash3": _CUDNN_FIRST,
    "flash": [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ],
    "efficient": [
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.MATH,
    ],
}


@dataclass(frozen=True)
class Levers:
    """Which levers to pull; `from_settings` reads them, `off()` is stock diffusers."""

    attention_backend: AttentionBackend = "default"
    flash3_padded_batches: bool = False
    compile_transformer: bool = False
    compile_mode: CompileMode = "default"
    fuse_qkv: bool = False
    real_rope: bool = False
    gelu_epilogue: bool = False
    cuda_graph_max_pixels: int = 0
    paired_cfg_max_pixels: int = 0
    vae_conv2d: bool = False
    vae_channels_last: bool = False
    compile_vae: bool = False
    fp8_matmuls: bool = False
    fp8_rowwise: bool = True
    fp8_bf16_edge_blocks: int = 1
    step_cache_threshold: float = 0.0  # 0: no step cache

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> Levers:
        if not settings.acceleration:
            return cls.off()
        return cls(
            attention_backend=settings.attention_backend,
            flash3_padded_batches=settings.flash3_padded_batches,
            compile_transformer=settings.compile_transformer,
            compile_mode=settings.compile_mode,
            fuse_qkv=settings.fuse_qkv,
            real_rope=settings.real_rope,
            gelu_epilogue=settings.gelu_epilogue,
            cuda_graph_max_pixels=settings.cuda_graph_max_pixels,
            paired_cfg_max_pixels=settings.paired_cfg_max_pixels,
            vae_conv2d=settings.vae_conv2d,
            vae_channels_last=settings.vae_channels_last,
            compile_vae=settings.compile_vae,
            fp8_matmuls=settings.fp8_matmuls,
            fp8_rowwise=settings.fp8_scaling == "row",
            fp8_bf16_edge_blocks=settings.fp8_bf16_edge_blocks,
            step_cache_threshold=settings.step_cache_threshold if settings.step_cache else 0.0,
        )

    @classmethod
    def off(cls) -> Levers:
        return cls()


@dataclass
class Accelerated:
    """What `accelerate` did to a pipeline; `forward` and `paired` are set when the
    transformer is wrapped, `fp8` and `step_cache` when those fast modes are on."""

    active: list[str] = field(default_factory=list)
    forward: AcceleratedForward | None = None
    paired: PairedGuidance | None = None
    fp8: Fp8Report | None = None
    step_cache: CachedBlocks | None = None

    @property
    def per_shape(self) -> bool:
        """True when some lever compiles or captures per image shape: warm every size."""
        return any(name in self.active for name in ("compile_transformer", "cuda_graphs"))

    @property
    def batch_coupling(self) -> str | None:
        """The fast mode that decides for a whole batch at once, if one is on: a job's image
        would then depend on the jobs it shares a batch with, so the engine must make one
        image per call."""
        if self.step_cache is not None:
            return "the step cache skips steps for the whole batch"
        if "fp8_tensor" in self.active:
            return "per-tensor FP8 scales activations over the whole batch"
        return None


def batch_limit(settings: WorkerSettings, done: Accelerated) -> BatchLimit:
    """BATCH_MAX_IMAGES and BATCH_MAX_PIXELS, unless a fast mode couples a batch's images."""
    limit = BatchLimit(settings.batch_max_images, settings.batch_max_pixels)
    if done.batch_coupling is not None and limit.max_images > 1:
        logger.info("batching off: %s", done.batch_coupling)
        return ONE_AT_A_TIME
    return limit


def choose_attention_backend(
    requested: AttentionBackend, device: torch.device, transformer: Any
) -> AttentionBackend:
    """'auto' is FA3 where it can run and cuDNN-first SDPA elsewhere; an explicit 'flash3'
    that cannot run on a GPU stops the worker with the reason (on a CPU it is off, like
    every CUDA-only lever)."""
    if requested != "auto" and not (requested == "flash3" and device.type == "cuda"):
        return requested
    reason = flash3_unavailable(device, transformer.config.attention_head_dim)
    if reason is None:
        return "flash3"
    if requested == "flash3":
        raise RuntimeError(f"ATTENTION_BACKEND=flash3: {reason}")
    logger.info("ATTENTION_BACKEND=auto: SDPA with cuDNN first, not FlashAttention-3: %s", reason)
    return "cudnn"


def accelerate(pipe: QwenImagePipeline, levers: Levers, *, allow_cpu: bool = False) -> Accelerated:
    """Pull `levers` on `pipe` in place, after it was moved to its device (see
    `install_joint_attention`).

    On a CPU nothing happens, unless `allow_cpu`: then the device-agnostic levers (fused QKV,
    real RoPE, the GELU epilogue, 2-D VAE convolutions, channels-last, SDPA order, CFG's
    forwards joined, FP8 through the CPU's torch._scaled_mm, the step cache) are pulled and
    the CUDA-only ones (FA3, compile, graphs) skipped. FP8 on a GPU older than Ada or Hopper,
    and an explicit FA3 on a GPU other than Hopper or without its wheel, raise: those
    settings cannot be honoured there.
    """
    done = Accelerated()
    parts: Any = pipe
    on_cuda = parts.device.type == "cuda"
    if not on_cuda and not allow_cpu:
        logger.info("speed levers off: the model runs on %s", parts.device)
        return done
    transformer = parts.transformer
    backend = choose_attention_backend(levers.attention_backend, parts.device, transformer)
    flash3 = on_cuda and backend == "flash3"
    flash3_padded = flash3 and levers.flash3_padded_batches
    if levers.fuse_qkv or levers.real_rope or flash3:
        install_joint_attention(
            transformer,
            fuse=levers.fuse_qkv,
            real_rope=levers.real_rope,
            flash3=flash3,
            flash3_padded=flash3_padded,
        )
        done.active += [name for name in ("fuse_qkv", "real_rope") if getattr(levers, name)]
        if flash3_padded:
            done.active.append("flash3_padded_batches")
    if levers.fp8_matmuls:
        capability = torch.cuda.get_device_capability(parts.device) if on_cuda else None
        if capability is not None and capability < _FP8_CAPABILITY:
            raise RuntimeError(
                "FP8_MATMULS needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                f"this one is {capability[0]}.{capability[1]}"
            )
        done.fp8 = quantise_blocks(transformer, levers.fp8_rowwise, levers.fp8_bf16_edge_blocks)
        done.active.append("fp8_row" if levers.fp8_rowwise else "fp8_tensor")
    if levers.gelu_epilogue:
        use_gelu_epilogues(transformer)
        done.active.append("gelu_epilogue")
    if levers.vae_conv2d:
        use_conv2d_for_single_frames(parts.vae)
        done.active.append("vae_conv2d")
    if levers.vae_channels_last:
        to_channels_last(parts.vae)
        done.active.append("vae_channels_last")
    mode = None if levers.compile_mode == "default" else levers.compile_mode
    if on_cuda and levers.compile_transformer:
        # Dynamic shapes: one compiled block serves every image size and prompt length, so
        # a prompt of a new length never recompiles inside a request.
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, _RECOMPILE_LIMIT)
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=True, mode=mode)
        done.active.append("compile_transformer")
    if on_cuda and levers.compile_vae:
        parts.vae.decoder.compile(dynamic=True, mode=mode)
        done.active.append("compile_vae")
    if levers.step_cache_threshold > 0:
        done.step_cache = install_step_cache(transformer, levers.step_cache_threshold)
        done.active.append("step_cache")
    # The step cache decides on the host between blocks: no graph can hold such a forward.
    graph_pixels = levers.cuda_graph_max_pixels if on_cuda and done.step_cache is None else 0
    order = _SDPA_ORDER.get(backend)
    if order is not None or graph_pixels > 0:
        done.forward = AcceleratedForward(transformer.forward, order, graph_pixels)
        transformer.forward = done.forward
        if order is not None:
            done.active.append(f"attention_{backend}")
        if graph_pixels > 0:
            done.active.append("cuda_graphs")
    # Outside the graphs, so the joined forward is graphed; a fast mode that couples a
    # batch's images would couple the prompt's and the negative prompt's too.
    if levers.paired_cfg_max_pixels > 0 and done.batch_coupling is None:
        done.paired = PairedGuidance(
            transformer.forward, parts.encode_prompt, levers.paired_cfg_max_pixels
        )
        transformer.forward = done.paired
        parts.encode_prompt = done.paired.encode_prompt
        done.active.append("paired_cfg")
    logger.info("speed levers on %s: %s", parts.device, ", ".join(done.active) or "none")
    return done
