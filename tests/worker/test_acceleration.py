"""The speed levers on the CPU: off by default, and where they can run here, the same function."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from qwen_image_worker.engine.acceleration import (
    _SDPA_ORDER,
    LOSSLESS_REL_L2_TOLERANCE,
    Accelerated,
    Levers,
    accelerate,
    batch_limit,
    choose_attention_backend,
    relative_error,
)
from qwen_image_worker.engine.base import BatchLimit
from qwen_image_worker.engine.cuda_graphs import AcceleratedForward
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.fp8 import Fp8Linear
from qwen_image_worker.engine.joint_attention import JointAttnProcessor, flash3_unavailable
from qwen_image_worker.engine.loading import load_pipeline
from qwen_image_worker.engine.step_cache import CachedBlocks
from qwen_image_worker.settings import WorkerSettings

from .conftest import CPU_LEVERS, spec


def rel_l2(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return relative_error(torch.tensor(np.asarray(a)), torch.tensor(np.asarray(b)))


def test_defaults_pull_every_lossless_lever_and_the_master_switch_turns_all_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    levers = Levers.from_settings(WorkerSettings())
    assert levers.attention_backend == "auto"
    assert levers.flash3_padded_batches
    assert levers.compile_transformer and levers.fuse_qkv and levers.real_rope
    assert levers.gelu_epilogue
    assert levers.cuda_graph_max_pixels == levers.paired_cfg_max_pixels == 512 * 512
    assert levers.vae_conv2d and levers.vae_channels_last
    assert not levers.compile_vae
    # The fast modes, not lossless, are opt-in.
    assert not levers.fp8_matmuls and levers.step_cache_threshold == 0
    monkeypatch.setenv("ACCELERATION", "false")
    assert Levers.from_settings(WorkerSettings()) == Levers.off()


def test_each_lever_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "ATTENTION_BACKEND": "flash",
        "FLASH3_PADDED_BATCHES": "false",
        "COMPILE_TRANSFORMER": "false",
        "COMPILE_MODE": "max-autotune-no-cudagraphs",
        "FUSE_QKV": "false",
        "REAL_ROPE": "false",
        "GELU_EPILOGUE": "false",
        "CUDA_GRAPH_MAX_PIXELS": "0",
        "PAIRED_CFG_MAX_PIXELS": "65536",
        "VAE_CONV2D": "false",
        "VAE_CHANNELS_LAST": "false",
        "COMPILE_VAE": "true",
        "WARMUP_SIZES": "512x512, 1664x928",
        "FP8_MATMULS": "true",
        "FP8_SCALING": "tensor",
        "FP8_BF16_EDGE_BLOCKS": "2",
        "STEP_CACHE": "true",
        "STEP_CACHE_THRESHOLD": "0.12",
    }.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings()
    assert Levers.from_settings(settings) == Levers(
        attention_backend="flash",
        flash3_padded_batches=False,
        compile_transformer=False,
        compile_mode="max-autotune-no-cudagraphs",
        fuse_qkv=False,
        real_rope=False,
        gelu_epilogue=False,
        cuda_graph_max_pixels=0,
        paired_cfg_max_pixels=256 * 256,
        vae_conv2d=False,
        vae_channels_last=False,
        compile_vae=True,
        fp8_matmuls=True,
        fp8_rowwise=False,
        fp8_bf16_edge_blocks=2,
        step_cache_threshold=0.12,
    )
    assert settings.warmup_size_list == [(512, 512), (1664, 928)]


def test_the_step_cache_threshold_counts_only_with_the_cache_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEP_CACHE_THRESHOLD", "0.3")
    assert Levers.from_settings(WorkerSettings()).step_cache_threshold == 0
    monkeypatch.setenv("STEP_CACHE", "true")
    assert Levers.from_settings(WorkerSettings()).step_cache_threshold == 0.3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("warmup_sizes", "512", "not a WIDTHxHEIGHT size: '512'"),
        ("warmup_sizes", "512x512,4096x512", "each side must be 16..2048"),
        ("attention_backend", "sage", "attention_backend"),
        ("compile_mode", "reduce-overhead", "compile_mode"),
        ("cuda_graph_max_pixels", -1, "cuda_graph_max_pixels"),
        ("paired_cfg_max_pixels", -1, "paired_cfg_max_pixels"),
        ("fp8_scaling", "block", "fp8_scaling"),
        ("fp8_bf16_edge_blocks", -1, "fp8_bf16_edge_blocks"),
        ("step_cache_threshold", 0, "step_cache_threshold"),
        ("step_cache_threshold", 1.5, "step_cache_threshold"),
    ],
)
def test_bad_lever_settings_fail_at_start_up_naming_the_field(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        WorkerSettings(**{field: value})
    assert field in str(caught.value)


def test_the_served_sizes_are_warmed_by_default() -> None:
    assert WorkerSettings().warmup_size_list == [
        (256, 256),
        (512, 512),
        (1024, 1024),
        (1328, 1328),
        (1664, 928),
        (928, 1664),
        (1472, 1140),
        (1140, 1472),
    ]


def test_on_the_cpu_the_default_levers_leave_the_pipeline_untouched() -> None:
    pipe = load_pipeline(None, torch.device("cpu"))
    plain = load_pipeline(None, torch.device("cpu"))
    forward = pipe.transformer.forward
    done = accelerate(pipe, Levers.from_settings(WorkerSettings()))
    assert done.active == [] and done.forward is None and not done.per_shape
    assert pipe.transformer.forward == forward
    assert not any(
        isinstance(p, JointAttnProcessor) for p in pipe.transformer.attn_processors.values()
    )
    # Even asked for, the fast modes leave a CPU worker alone.
    fast = Levers(fp8_matmuls=True, step_cache_threshold=0.5)
    assert accelerate(pipe, fast).active == []
    assert not any(isinstance(m, Fp8Linear | CachedBlocks) for m in pipe.transformer.modules())
    job = spec(seed=5)
    ours = np.asarray(Engine(pipe).generate(job, lambda: False))
    theirs = np.asarray(Engine(plain).generate(job, lambda: False))
    assert np.array_equal(ours, theirs)


def test_cpu_safe_levers_change_the_arithmetic_not_the_picture() -> None:
    """What --tiny benchmarks: fused QKV, 2-D VAE convolutions, channels-last, SDPA order,
    CFG's two forwards joined."""
    pipe = load_pipeline(None, torch.device("cpu"))
    plain = load_pipeline(None, torch.device("cpu"))
    done = accelerate(pipe, Levers.from_settings(WorkerSettings()), allow_cpu=True)
    assert done.active == CPU_LEVERS
    assert not done.per_shape  # nothing compiles or captures on a CPU
    assert done.batch_coupling is None  # a job's image does not depend on its batch
    assert isinstance(done.forward, AcceleratedForward) and done.paired is not None
    assert pipe.transformer.forward is done.paired
    job = spec(seed=9, width=72, height=40)
    ours = np.asarray(Engine(pipe).generate(job, lambda: False))
    theirs = np.asarray(Engine(plain).generate(job, lambda: False))
    other = np.asarray(Engine(plain).generate(spec(seed=10, width=72, height=40), lambda: False))
    assert ours.shape == (40, 72, 3)
    assert rel_l2(ours, theirs) < 1e-3
    assert rel_l2(other, theirs) > 5 * LOSSLESS_REL_L2_TOLERANCE  # a seed apart
    assert done.forward is not None and done.forward.stats.replayed == 0


def test_one_prompt_reaches_the_transformer_without_a_text_mask(engine: Engine) -> None:
    masks: list[object] = []

    def record(_module: object, _args: object, kwargs: dict[str, object]) -> None:
        masks.append(kwargs.get("encoder_hidden_states_mask"))

    handle = engine.pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for prompt, negative in [("a fox", ""), ("一只猫 in the rain", "blurry, low quality")]:
            engine.generate(spec(prompt=prompt, negative_prompt=negative), lambda: False)
    finally:
        handle.remove()
    assert len(masks) == 2 * 2 * 3 and all(mask is None for mask in masks)


def warm_up_decodes(engine: Engine) -> tuple[list[tuple[int, int]], list[tuple[int, ...]]]:
    """The sizes `engine.warm_up` reports, and the (batch, height, width) of each latent
    its VAE decoded."""
    made: list[tuple[int, ...]] = []
    handle = engine.pipe.vae.post_quant_conv.register_forward_pre_hook(
        lambda _m, args: made.append((args[0].shape[0], *args[0].shape[-2:]))
    )
    try:
        return engine.warm_up(spec(num_inference_steps=1)), made
    finally:
        handle.remove()


def test_flash3_is_a_cuda_lever_and_says_how_to_get_its_kernels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """This machine has no FA3 wheel and no GPU: a worker asked for FA3 on CUDA would fail at
    start-up with the reason, one left at 'auto' runs SDPA and logs why; on a CPU the lever
    is off like the other CUDA-only ones, and masked calls keep SDPA's order (cuDNN first)
    either way."""
    assert WorkerSettings(attention_backend="flash3").attention_backend == "flash3"
    reason = flash3_unavailable(torch.device("cpu"), 128)
    assert reason is not None and "tools/fa3/build.sh" in reason
    pipe = load_pipeline(None, torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="qwen_image_worker.engine.acceleration"):
        assert choose_attention_backend("auto", torch.device("cpu"), pipe.transformer) == "cudnn"
    assert "not FlashAttention-3" in caplog.text and "tools/fa3/build.sh" in caplog.text
    done = accelerate(pipe, Levers(attention_backend="flash3", fuse_qkv=True), allow_cpu=True)
    assert done.active == ["fuse_qkv", "attention_flash3"]
    processors = list(pipe.transformer.attn_processors.values())
    assert processors and all(
        isinstance(p, JointAttnProcessor) and not p.flash3 for p in processors
    )
    assert done.forward is not None
    assert done.forward._sdpa_order == _SDPA_ORDER["cudnn"]


def test_warm_up_makes_each_generated_shape_once(engine: Engine) -> None:
    sizes = [(72, 40), (80, 48), (64, 64), (96, 96)]
    warming = Engine(engine.pipe, warmup_sizes=sizes)
    done, made = warm_up_decodes(warming)
    # 72x40 is generated as 80x48, and the base image is 64x64: each shape once.
    assert done == [(64, 64), (72, 40), (96, 96)]
    assert made == [(1, 8, 8), (1, 6, 10), (1, 12, 12)]
    assert Engine(engine.pipe).warm_up(spec(num_inference_steps=1)) == [(64, 64)]


def test_a_batching_warm_up_adds_a_batch_of_two_at_the_first_size_that_batches(
    engine: Engine,
) -> None:
    # 64x64 and 72x40 make one image a call; 32x32 makes two.
    batching = Engine(
        engine.pipe, warmup_sizes=[(72, 40), (32, 32)], batch=BatchLimit(8, 2 * 32 * 32)
    )
    done, made = warm_up_decodes(batching)
    assert done == [(64, 64), (72, 40), (32, 32)]
    assert made == [(1, 8, 8), (1, 6, 10), (1, 4, 4), (2, 4, 4)]


@pytest.mark.parametrize(
    ("scaling", "coupling"),
    [("row", None), ("tensor", "per-tensor FP8 scales activations over the whole batch")],
)
def test_per_tensor_fp8_couples_a_batch_and_per_row_does_not(
    scaling: str, coupling: str | None
) -> None:
    # Row-wise scales are per token: an image's arithmetic is its own in any batch.
    pipe = load_pipeline(None, torch.device("cpu"))
    levers = Levers(fp8_matmuls=True, fp8_rowwise=scaling == "row")
    assert accelerate(pipe, levers, allow_cpu=True).batch_coupling == coupling


def test_the_batch_limit_is_the_settings_unless_a_fast_mode_couples_a_batch() -> None:
    settings = WorkerSettings.model_construct()
    assert batch_limit(settings, Accelerated()) == BatchLimit(8, 1024 * 1024)
    coupled = Accelerated(active=["fp8_tensor"])
    assert coupled.batch_coupling is not None
    assert batch_limit(settings, coupled) == BatchLimit()
