"""The first-block step cache on the demo model (4 blocks) on the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from diffusers import QwenImagePipeline

from qwen_image_worker.engine.acceleration import Levers, accelerate, relative_error
from qwen_image_worker.engine.base import StopRequested
from qwen_image_worker.engine.demo_model import build_demo_pipeline
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.step_cache import CachedBlocks, install_step_cache
from qwen_image_worker.settings import WorkerSettings

from .conftest import spec

JOB = spec(seed=11, num_inference_steps=8)
# Far above any step-to-step change of the first block's residual: every forward after each
# pass's first reuses the cache.
SKIP_ALL = 10.0


def deep_pipeline() -> QwenImagePipeline:
    pipe = build_demo_pipeline(num_layers=4)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def latents_of(pipe: QwenImagePipeline) -> Iterator[dict[str, torch.Tensor]]:
    seen: dict[str, torch.Tensor] = {}
    handle = pipe.vae.post_quant_conv.register_forward_pre_hook(
        lambda _m, args: seen.__setitem__("latents", args[0].clone())
    )
    try:
        yield seen
    finally:
        handle.remove()


def latents(pipe: QwenImagePipeline, job: object = JOB) -> torch.Tensor:
    with latents_of(pipe) as seen:
        Engine(pipe).generate(job, lambda: False)  # type: ignore[arg-type]
    return seen["latents"]


@pytest.fixture(scope="module")
def uncached() -> torch.Tensor:
    torch.set_num_threads(1)
    return latents(deep_pipeline())


def test_threshold_zero_is_the_uncached_pipeline_exactly(uncached: torch.Tensor) -> None:
    pipe = deep_pipeline()
    cache = install_step_cache(pipe.transformer, threshold=0.0)
    assert torch.equal(latents(pipe), uncached)
    # 8 steps, a cond and an uncond forward each, every one through all blocks.
    assert (cache.stats.computed, cache.stats.skipped) == (16, 0)


def test_a_high_threshold_skips_the_blocks_and_moves_the_output(uncached: torch.Tensor) -> None:
    pipe = deep_pipeline()
    cache = install_step_cache(pipe.transformer, threshold=SKIP_ALL)
    ours = latents(pipe)
    # Each pass (cond, uncond) runs its own first forward in full: their states are apart.
    assert (cache.stats.computed, cache.stats.skipped) == (2, 14)
    error = relative_error(ours, uncached)
    another_seed = relative_error(latents(deep_pipeline(), replace(JOB, seed=12)), uncached)
    assert 1e-3 < error < another_seed


def test_a_middle_threshold_skips_some_steps_and_stays_closer(uncached: torch.Tensor) -> None:
    pipe = deep_pipeline()
    cache = install_step_cache(pipe.transformer, threshold=0.3)
    ours = latents(pipe)
    assert 2 < cache.stats.computed < 16 and cache.stats.skipped > 0
    skip_all = deep_pipeline()
    install_step_cache(skip_all.transformer, threshold=SKIP_ALL)
    assert relative_error(ours, uncached) < relative_error(latents(skip_all), uncached)


def test_each_call_starts_afresh_also_after_a_stopped_one() -> None:
    pipe = deep_pipeline()
    install_step_cache(pipe.transformer, threshold=0.3)
    first = latents(pipe)
    assert torch.equal(latents(pipe), first)
    asked = 0

    def stop_after_five() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 5

    with pytest.raises(StopRequested):
        Engine(pipe).generate(replace(JOB, seed=40, prompt="another"), stop_after_five)
    assert torch.equal(latents(pipe), first)


def test_installed_after_the_pipeline_ran_it_still_sees_the_passes() -> None:
    """diffusers caches which modules carry hooks; the cache must be found all the same."""
    pipe = deep_pipeline()
    latents(pipe)
    cache = install_step_cache(pipe.transformer, threshold=SKIP_ALL)
    latents(pipe)
    assert cache.stats.skipped == 14


def test_outside_a_pipeline_every_block_runs_and_nothing_is_kept() -> None:
    plain = deep_pipeline().transformer
    cached = deep_pipeline().transformer
    cache = install_step_cache(cached, threshold=SKIP_ALL)
    inputs = {
        "hidden_states": torch.randn(1, 16, 16),
        "encoder_hidden_states": torch.randn(1, 5, 16),
        "timestep": torch.full((1,), 0.5),
        "img_shapes": [[(1, 4, 4)]],
        "return_dict": False,
    }
    with torch.no_grad():
        expected = plain(**inputs)[0]
        for _ in range(2):
            assert torch.equal(cached(**inputs)[0], expected)
    assert (cache.stats.computed, cache.stats.skipped) == (2, 0)


def test_the_cache_wraps_compiled_blocks_without_breaking_their_graph(
    uncached: torch.Tensor,
) -> None:
    """diffusers' own first-block cache decides inside the blocks, which fullgraph compile
    refuses; this one decides between them."""
    torch._dynamo.reset()
    pipe = deep_pipeline()
    pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=True, backend="aot_eager")
    cache = install_step_cache(pipe.transformer, threshold=0.0)
    torch._dynamo.utils.counters.clear()
    assert relative_error(latents(pipe), uncached) < 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert cache.stats.computed == 16
    torch._dynamo.reset()


def test_the_setting_installs_the_cache_and_keeps_every_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEP_CACHE", "true")
    monkeypatch.setenv("STEP_CACHE_THRESHOLD", "0.2")
    monkeypatch.setenv("FUSE_QKV", "false")  # which adds the fused weights' names
    pipe = deep_pipeline()
    names = {name for name, _ in pipe.transformer.named_parameters()}
    done = accelerate(pipe, Levers.from_settings(WorkerSettings()), allow_cpu=True)
    assert "step_cache" in done.active and "cuda_graphs" not in done.active
    assert isinstance(done.step_cache, CachedBlocks) and done.step_cache.threshold == 0.2
    # It decides for a whole batch at once: the worker makes one image per call.
    assert done.batch_coupling == "the step cache skips steps for the whole batch"
    assert len(list(pipe.transformer.named_parameters())) == len(names)
    Engine(pipe).generate(JOB, lambda: False)
    assert done.step_cache.stats.computed + done.step_cache.stats.skipped == 16
