"""Worker configuration: one pydantic-settings class, read once at start-up."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qwen_image_common.logs import LogFormat

AttentionBackend = Literal["auto", "flash3", "cudnn", "flash", "efficient", "default"]
CompileMode = Literal["default", "max-autotune-no-cudagraphs"]
# The sizes the public API serves (DESIGN.md section 2): `size` values and `aspect_ratio`s.
SERVED_SIZES = "256x256,512x512,1024x1024,1328x1328,1664x928,928x1664,1472x1140,1140x1472"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    model_path: str = Field(
        default="demo",
        description="Diffusers folder of a Qwen-Image model (its model_index.json names the "
        "pipeline: QwenImagePipeline, QwenImageEditPlusPipeline or QwenImageEditPipeline), "
        "'demo' (or empty) for the tiny built-in text-to-image model with random weights, "
        "'demo-edit' for the tiny built-in editor.",
    )
    model_name: str = Field(
        default="Qwen-Image",
        description="The model's public name: the router serves it under this name.",
    )
    task_queue_size: int = Field(
        default=4, ge=0, le=1024, description="Jobs that may wait behind the running batch."
    )
    batch_max_images: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Most images one pipeline call makes when waiting jobs share size, steps "
        "and guidance scale; 1 turns batching off.",
    )
    batch_max_pixels: int = Field(
        default=1024 * 1024,
        ge=0,
        description="Most pixels one batched call makes in all: the default batches up to 4 "
        "images at 512x512 and 8 at 256x256 and leaves 1024x1024 and larger alone, which an "
        "H200 runs compute-bound one at a time (docs/performance.md).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the model runs; auto picks CUDA when available."
    )
    host: str = Field(default="0.0.0.0", description="Address the internal API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the internal API.")
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="When set, /metrics is also served on this port, so a network policy can "
        "let metrics scrapers in without opening the job API to them; 0: the API port only.",
    )
    drain_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="On SIGTERM, how long running and queued jobs may take to finish.",
    )
    warmup_size_pixels: int = Field(
        default=256, ge=16, le=2048, description="Side of the warm-up image made before ready."
    )
    warmup_steps: int = Field(default=2, ge=1, le=50, description="Steps of the warm-up image.")
    warmup_sizes: str = Field(
        default=SERVED_SIZES,
        description="Comma-separated WIDTHxHEIGHT sizes also made at start-up when a lever "
        "compiles or captures per shape, so no request pays for it; default: every size the "
        "API serves.",
    )
    acceleration: bool = Field(
        default=True,
        description="Master switch of the GPU speed levers below; false runs stock diffusers "
        "arithmetic. The levers act on CUDA only.",
    )
    attention_backend: AttentionBackend = Field(
        default="auto",
        description="Attention kernels of the transformer. 'flash3' runs the joint attention "
        "through FlashAttention-3 (Hopper only; the wheel tools/fa3/build.sh builds), masked "
        "calls too with FLASH3_PADDED_BATCHES, else as 'cudnn'; 'auto' is 'flash3' where it "
        "can run and 'cudnn' elsewhere, logging why; 'cudnn', 'flash' and 'efficient' name "
        "the SDPA kernel tried first (the others stay as fallbacks); 'default' leaves the "
        "choice to PyTorch.",
    )
    flash3_padded_batches: bool = Field(
        default=True,
        description="With FlashAttention-3 (ATTENTION_BACKEND auto or flash3), also the calls "
        "that need a text mask (batched jobs, CFG's two forwards joined: a padded text), as "
        "each image's attention over its used keys; false runs them through SDPA's mask "
        "(variant sdpa-padded).",
    )
    compile_transformer: bool = Field(
        default=True,
        description="Regional torch.compile of the transformer blocks, with dynamic shapes so "
        "one compile serves every size and prompt length.",
    )
    compile_mode: CompileMode = Field(
        default="default", description="torch.compile mode of the compiled parts."
    )
    fuse_qkv: bool = Field(
        default=True,
        description="One matmul for Q, K and V of each stream instead of three (same weights).",
    )
    real_rope: bool = Field(
        default=True,
        description="Rotary embeddings as real fp32 products instead of complex64 ones (the "
        "same numbers): compiled, they fuse with the Q/K norm and the concatenation, where a "
        "complex multiply runs as separate kernels through fp32 copies of Q and K. Made for "
        "COMPILE_TRANSFORMER; run eagerly, the real form launches more kernels.",
    )
    gelu_epilogue: bool = Field(
        default=True,
        description="The MLP's GELU computed in the epilogue of its first matmul (cuBLASLt), "
        "saving a write and a read of the 4x-wide hidden.",
    )
    cuda_graph_max_pixels: int = Field(
        default=512 * 512,
        ge=0,
        description="Replay the transformer forward as a CUDA graph for images of at most "
        "this many pixels (launch-bound sizes); 0 turns graphs off.",
    )
    paired_cfg_max_pixels: int = Field(
        default=512 * 512,
        ge=0,
        description="Run true CFG's two transformer forwards of a step (prompt and negative "
        "prompt) as one forward of twice the batch for images of at most this many pixels "
        "(launch-bound sizes); 0 runs them one after the other.",
    )
    vae_conv2d: bool = Field(
        default=True,
        description="Decode single-frame images with 2-D convolutions: the causal 3-D kernels' "
        "other time slices only ever meet zero padding.",
    )
    vae_channels_last: bool = Field(
        default=True,
        description="Channels-last VAE convolution weights: NHWC is what cuDNN's tensor-core "
        "kernels read natively.",
    )
    compile_vae: bool = Field(
        default=False,
        description="torch.compile the VAE decoder (dynamic shapes). Off by default: the "
        "decode is a small part of a job, and compiling it adds to every start-up.",
    )
    # Opt-in fast modes: faster than the levers above, not lossless (docs/performance.md).
    fp8_matmuls: bool = Field(
        default=False,
        description="FP8 (e4m3) matmuls for the attention and MLP layers of the transformer "
        "blocks, through torch._scaled_mm (GPUs of compute capability 8.9 or newer); weights "
        "are quantised once at load, activations per call. Changes the output slightly.",
    )
    fp8_scaling: Literal["row", "tensor"] = Field(
        default="row",
        description="FP8 scale granularity: 'row' (one scale per weight output channel and per "
        "activation token) or 'tensor' (one scale per matrix: faster, less exact).",
    )
    fp8_bf16_edge_blocks: int = Field(
        default=1,
        ge=0,
        le=30,
        description="With FP8_MATMULS, this many of the first and of the last transformer "
        "blocks keep bf16 matmuls.",
    )
    step_cache: bool = Field(
        default=False,
        description="First-block step cache: a step whose first-block residual barely moved "
        "since the last full step reuses the other blocks' residual instead of running them. "
        "Changes the output; turns CUDA graphs and batching off.",
    )
    step_cache_threshold: float = Field(
        default=0.05,
        gt=0,
        le=1.0,
        description="With STEP_CACHE, the relative change of the first block's residual below "
        "which a step reuses the cache; higher skips more steps and moves the output further.",
    )
    # MODEL_PATH=simulated: no model at all, for load and fault tests of this program.
    simulated_step_seconds: float = Field(
        default=0.05,
        ge=0,
        le=60,
        description="With MODEL_PATH=simulated, how long one denoising step takes (a sleep); "
        "the image is one flat colour of the requested size.",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    log_format: LogFormat = Field(default="text", description="text, or json in production.")

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes_parse(cls, value: str) -> str:
        parse_sizes(value)
        return value

    @property
    def uses_demo_model(self) -> bool:
        return self.model_path.strip().lower() in ("", "demo")

    @property
    def warmup_size_list(self) -> list[tuple[int, int]]:
        return parse_sizes(self.warmup_sizes)


def parse_sizes(value: str) -> list[tuple[int, int]]:
    """'256x256, 1664x928' -> [(256, 256), (1664, 928)]; each side 16..2048 pixels."""
    sizes = []
    for item in value.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if match is None:
            raise ValueError(f"not a WIDTHxHEIGHT size: {item.strip()!r}")
        width, height = int(match[1]), int(match[2])
        if not (16 <= width <= 2048 and 16 <= height <= 2048):
            raise ValueError(f"size {width}x{height}: each side must be 16..2048 pixels")
        sizes.append((width, height))
    return sizes
