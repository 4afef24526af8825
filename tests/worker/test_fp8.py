"""FP8 matmuls on the CPU: the quantisation, the layer's arithmetic, which layers change.

torch._scaled_mm runs on the CPU too (as the reference arithmetic, no fp8 units), so the
layer here makes the same call with the same operand layouts as on a GPU; row-wise scales,
which the CPU kernel does not take, are applied to its unit-scaled product.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import QwenImageTransformer2DModel
from torch import nn

from qwen_image_worker.engine.acceleration import relative_error
from qwen_image_worker.engine.fp8 import (
    E4M3,
    E4M3_MAX,
    Fp8Linear,
    quantise,
    quantise_blocks,
)
from qwen_image_worker.engine.joint_attention import install_joint_attention

from .conftest import compile_blocks_and_vary_shapes, forward_inputs, random_transformer

# e4m3 keeps 3 mantissa bits: rounding moves a normal number by at most 2^-4 of itself.
E4M3_ROUNDING = 2.0**-4


def deep_transformer(layers: int = 4) -> QwenImageTransformer2DModel:
    return random_transformer(layers=layers, heads=2, text_dim=32)


def rows_of_many_magnitudes() -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(6, 32) * torch.logspace(-3, 3, 6)[:, None]
    x[2] = 0
    return x


def row_errors(x: torch.Tensor, values: torch.Tensor, scale: torch.Tensor) -> list[float]:
    back = values.float() * scale
    return [relative_error(back[i], x[i]) if x[i].any() else 0.0 for i in range(len(x))]


def test_row_wise_quantisation_maps_each_rows_largest_magnitude_to_the_largest_e4m3() -> None:
    x = rows_of_many_magnitudes()
    values, scale = quantise(x, rowwise=True)
    assert values.dtype == E4M3 and scale.dtype == torch.float32 and scale.shape == (6, 1)
    peaks = values.float().abs().amax(dim=1)
    assert peaks[2] == 0 and not values.float().isnan().any()  # a zero row stays zero
    assert torch.all(peaks[[0, 1, 3, 4, 5]] == E4M3_MAX)
    errors = row_errors(x, values, scale)
    assert max(errors) < E4M3_ROUNDING
    assert min(e for e in errors if e) > 1e-3  # really quantised


def test_one_scale_per_matrix_loses_the_rows_far_below_the_largest() -> None:
    x = rows_of_many_magnitudes()
    values, scale = quantise(x, rowwise=False)
    assert scale.shape == ()
    errors = row_errors(x, values, scale)
    assert errors[0] > 0.5  # 1e-6 of the largest row: under e4m3's smallest step
    assert errors[5] < E4M3_ROUNDING  # the largest row is as exact as row-wise


@pytest.mark.parametrize("rowwise", [True, False])
def test_the_layer_multiplies_the_quantised_operands_and_costs_e4m3s_rounding(
    rowwise: bool,
) -> None:
    torch.manual_seed(2)
    linear = nn.Linear(64, 48)
    x = torch.randn(2, 7, 64)  # 14 rows: not a multiple of 16, as text lengths are not
    with torch.no_grad():
        out = Fp8Linear.from_linear(linear, rowwise)(x)
        exact = linear(x)
    qx, sx = quantise(x.reshape(-1, 64), rowwise)
    qw, sw = quantise(linear.weight.detach(), rowwise)
    dequantised = (qx.double() * sx.double()) @ (qw.double() * sw.double()).T
    reference = (dequantised + linear.bias.detach().double()).reshape(2, 7, 48)
    assert out.shape == (2, 7, 48) and out.dtype == x.dtype
    assert relative_error(out, reference) < 1e-5  # scales applied as multipliers, once each
    assert 5e-3 < relative_error(out, exact) < E4M3_ROUNDING


def test_a_layer_cut_from_a_fused_one_shares_its_memory_and_its_rows() -> None:
    torch.manual_seed(3)
    fused = Fp8Linear.from_linear(nn.Linear(32, 96), rowwise=True)
    part = fused.rows(32, 64, fused.bias[32:64] if fused.bias is not None else None)
    x = torch.randn(5, 32)
    assert part.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
    assert torch.equal(part(x), fused(x)[:, 32:64])


def test_every_block_but_the_edges_gets_fp8_matmuls_except_its_modulation() -> None:
    transformer = deep_transformer()
    report = quantise_blocks(transformer, rowwise=True, bf16_edge_blocks=1)
    blocks = transformer.transformer_blocks
    assert (report.blocks, report.bf16_blocks, report.ineligible_layers) == (2, 2, 0)
    # Per stream: Q, K, V, the output projection, the MLP's two layers.
    assert report.layers == 2 * 12
    for index in (0, 3):
        assert not any(isinstance(m, Fp8Linear) for m in blocks[index].modules())
    for index in (1, 2):
        block = blocks[index]
        for name in ("attn.to_q", "attn.to_out.0", "attn.add_v_proj", "img_mlp.net.2"):
            assert isinstance(block.get_submodule(name), Fp8Linear), name
        for name in ("img_mod.1", "txt_mod.1"):
            assert type(block.get_submodule(name)) is nn.Linear, name
    assert type(transformer.proj_out) is nn.Linear and type(transformer.img_in) is nn.Linear


def test_with_fused_qkv_the_projections_stay_views_into_one_fp8_weight() -> None:
    transformer = deep_transformer()
    before = sum(p.numel() * p.element_size() for p in transformer.parameters())
    install_joint_attention(transformer, fuse=True, real_rope=True)
    report = quantise_blocks(transformer, rowwise=True, bf16_edge_blocks=0)
    attn = transformer.transformer_blocks[0].attn
    assert isinstance(attn.to_qkv, Fp8Linear) and isinstance(attn.to_k, Fp8Linear)
    storage = attn.to_qkv.weight.untyped_storage().data_ptr()
    assert attn.to_k.weight.untyped_storage().data_ptr() == storage
    assert report.layers == 4 * 14  # and the fused Q|K|V layer of each stream
    tensors = {t.untyped_storage().data_ptr(): t for t in transformer.state_dict().values()}
    after = sum(t.untyped_storage().nbytes() for t in tensors.values())
    assert after < 0.7 * before  # the bf16 weights are gone, not kept beside the FP8 ones


@pytest.mark.parametrize("edge", [0, 1])
def test_the_fp8_transformer_stays_near_the_float_one(edge: int) -> None:
    exact = deep_transformer()
    fast = deep_transformer()
    install_joint_attention(fast, fuse=True, real_rope=True)
    quantise_blocks(fast, rowwise=True, bf16_edge_blocks=edge)
    inputs = forward_inputs(6, 5, 9, text_dim=32)
    with torch.no_grad():
        error = relative_error(fast(**inputs)[0], exact(**inputs)[0])
    assert 1e-3 < error < 0.05


def test_an_fp8_block_compiles_once_for_every_size_and_text_length() -> None:
    """Regional compile traces through the FP8 layers: no graph break, no recompile."""
    transformer = deep_transformer(layers=2)
    install_joint_attention(transformer, fuse=True, real_rope=True)
    quantise_blocks(transformer, rowwise=True, bf16_edge_blocks=0)
    new_graphs, compiled, eager = compile_blocks_and_vary_shapes(transformer, text_dim=32)
    assert new_graphs == 0
    assert relative_error(compiled, eager) < 1e-6
