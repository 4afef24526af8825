"""The joint attention's levers on the CPU: fused QKV, real RoPE and FA3's masked path
(through its reference) compute stock's function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

from qwen_image_worker.engine.acceleration import relative_error
from qwen_image_worker.engine.joint_attention import (
    JointAttnProcessor,
    apply_rotary_emb_real,
    attention_over_used_keys,
    install_joint_attention,
)

from .conftest import OpLog, compile_blocks_and_vary_shapes, forward_inputs, random_transformer


def storage_bytes(module: torch.nn.Module) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage() for p in module.parameters()}
    return sum(storage.nbytes() for storage in storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_rope_rotates_like_diffusers_complex_one(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 3, 16, generator=generator).to(dtype)
    angles = torch.randn(37, 8, generator=generator)
    freqs = torch.polar(torch.ones_like(angles), angles)
    real = apply_rotary_emb_real(x, freqs)
    stock = apply_rotary_emb_qwen(x, freqs, use_real=False)
    assert real.dtype == stock.dtype == dtype
    torch.testing.assert_close(real, stock, rtol=1e-6, atol=1e-6)
    # A rotation by other angles is not the same function.
    assert relative_error(apply_rotary_emb_real(x, freqs * 1j), stock) > 0.5


def test_masked_forward_applies_the_mask() -> None:
    """Padding is not attended to: a prompt padded to a longer batch keeps its output."""
    transformer = random_transformer(layers=2, heads=3, text_dim=16)
    install_joint_attention(transformer, fuse=True, real_rope=True)
    inputs = forward_inputs(4, 5, 7, text_dim=16)
    padded = dict(inputs)
    padded["encoder_hidden_states"] = torch.cat(
        [inputs["encoder_hidden_states"], torch.randn(2, 4, 16)], dim=1
    )
    mask = torch.ones(2, 11)
    mask[:, 7:] = 0
    with torch.no_grad():
        alone = transformer(**inputs)[0]
        masked = transformer(**padded, encoder_hidden_states_mask=mask)[0]
        unmasked = transformer(**padded)[0]
    assert relative_error(masked, alone) < 1e-5
    assert relative_error(unmasked, alone) > 1e-3  # the mask does something here


def test_attention_over_used_keys_is_each_elements_attention_over_its_first_keys() -> None:
    generator = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(2, 9, 3, 16, generator=generator) for _ in range(3))
    used = torch.tensor([9, 4], dtype=torch.int32)
    out = attention_over_used_keys(query, key, value, used)
    assert out.shape == query.shape and out.is_contiguous()
    for b, n in enumerate(used.tolist()):
        alone = torch.nn.functional.scaled_dot_product_attention(
            query[b : b + 1].transpose(1, 2),
            *(t[b : b + 1, :n].transpose(1, 2) for t in (key, value)),
        ).transpose(1, 2)
        torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-5, atol=1e-6)
    assert relative_error(out[1], attention_over_used_keys(query, key, value, used + 5)[1]) > 0.01


@pytest.mark.parametrize("padded", [True, False])
def test_with_flash3_a_padded_batch_runs_image_first_over_used_keys(padded: bool) -> None:
    """FA3 takes no mask: with `flash3_padded`, a batch with a padded text runs as each
    element's attention over its used keys, the image's first (`attention_over_used_keys`;
    here its reference, on CUDA FA3's kernel, which test_flash3_gpu.py checks against SDPA),
    eager and compiled; without, SDPA with the mask. Unpadded calls keep diffusers' FA3
    backend, which has no CPU kernel: not called here."""
    transformer = random_transformer(layers=2, heads=3, text_dim=16)
    inputs = forward_inputs(8, 8, 7, text_dim=16)
    mask = torch.ones(2, 7)
    mask[0, 5:] = 0  # a batch of a short and a long prompt
    with torch.no_grad():
        stock = transformer(**inputs, encoder_hidden_states_mask=mask)[0]
        install_joint_attention(
            transformer, fuse=True, real_rope=True, flash3=True, flash3_padded=padded
        )
        with OpLog() as log:
            ours = transformer(**inputs, encoder_hidden_states_mask=mask)[0]
    used_keys = log.ops.count("qwen_image.attention_over_used_keys.default")
    sdpa = [op for op in log.ops if "scaled_dot_product" in op]
    assert (used_keys, bool(sdpa)) == ((2, False) if padded else (0, True))  # one a block
    assert relative_error(ours, stock) < 1e-6
    calls, compiled = traced_calls(transformer, inputs | {"encoder_hidden_states_mask": mask})
    assert ("qwen_image.attention_over_used_keys.default" in calls) == padded
    assert bool([call for call in calls if "scaled_dot_product" in call]) != padded
    assert relative_error(compiled, stock) < 1e-6


@pytest.mark.parametrize(("fuse", "real_rope"), [(True, False), (False, True), (True, True)])
def test_each_lever_computes_the_stock_function_without_new_memory(
    fuse: bool, real_rope: bool
) -> None:
    transformer = random_transformer(layers=2, heads=3, text_dim=16)
    inputs = forward_inputs(8, 8, 7, text_dim=16)
    mask = torch.ones(2, 7)
    mask[0, 5:] = 0  # a batch of a short and a long prompt
    before = storage_bytes(transformer)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        stock_masked = transformer(**inputs, encoder_hidden_states_mask=mask)[0]
        assert install_joint_attention(transformer, fuse=fuse, real_rope=real_rope) == 2
        ours = transformer(**inputs)[0]
        ours_masked = transformer(**inputs, encoder_hidden_states_mask=mask)[0]
    assert relative_error(ours, stock) < 1e-6
    assert relative_error(ours_masked, stock_masked) < 1e-6
    assert relative_error(stock_masked, stock) > 1e-3  # the two calls differ
    attn = transformer.transformer_blocks[0].attn
    assert isinstance(attn.processor, JointAttnProcessor)
    assert hasattr(attn, "to_qkv") == fuse
    if fuse:
        assert attn.to_v.weight.untyped_storage().data_ptr() == (
            attn.to_qkv.weight.untyped_storage().data_ptr()
        )
    assert storage_bytes(transformer) == before


def test_the_levers_block_compiles_once_for_every_image_size_and_text_length() -> None:
    """No request pays for compilation: dynamic shapes cover new prompt lengths and sizes."""
    transformer = random_transformer(layers=2, heads=3, text_dim=16)
    install_joint_attention(transformer, fuse=True, real_rope=True)
    new_graphs, compiled, eager = compile_blocks_and_vary_shapes(transformer, text_dim=16)
    assert new_graphs == 0
    assert relative_error(compiled, eager) < 1e-6


def traced_calls(
    transformer: torch.nn.Module, inputs: dict[str, object]
) -> tuple[list[str], torch.Tensor]:
    """What dynamo hands the compiler for `transformer`'s blocks, by the names of the
    functions it calls, and the forward's output through them."""
    calls: list[str] = []

    def recording(graph: torch.fx.GraphModule, _inputs: Any) -> Callable[..., Any]:
        calls.extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return graph.forward

    torch._dynamo.reset()
    try:
        for block in transformer.transformer_blocks:
            block.compile(fullgraph=True, dynamic=True, backend=recording)
        with torch.no_grad():
            output = transformer(**inputs)[0]
    finally:
        torch._dynamo.reset()
    return calls, output


def levers_block(real_rope: bool) -> torch.nn.Module:
    transformer = random_transformer(layers=1, heads=3, text_dim=16)
    install_joint_attention(transformer, fuse=True, real_rope=real_rope)
    return transformer


def test_with_real_rope_the_compiled_block_holds_no_complex_arithmetic() -> None:
    """Inductor runs complex ops outside its fused kernels (through fp32 copies): the real
    form leaves it none."""
    inputs = forward_inputs(4, 5, 7, text_dim=16)
    complex_calls, _ = traced_calls(levers_block(real_rope=False), inputs)
    assert any("view_as_complex" in call for call in complex_calls)
    real, _ = traced_calls(levers_block(real_rope=True), inputs)
    assert real and not any("complex" in call for call in real)
