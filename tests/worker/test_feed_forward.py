"""The GELU epilogue lever on the CPU: the same MLP, and FP8 projections left alone. The CPU
runs the two-step path (see feed_forward.py); the GPU tests check the epilogue itself."""

from __future__ import annotations

import torch

from qwen_image_worker.engine.acceleration import relative_error
from qwen_image_worker.engine.feed_forward import EpilogueGELU, use_gelu_epilogues
from qwen_image_worker.engine.fp8 import Fp8Linear, quantise_blocks

from .conftest import compile_blocks_and_vary_shapes, forward_inputs, random_transformer


def test_the_epilogue_computes_the_stock_mlp() -> None:
    transformer = random_transformer(layers=2, heads=3, text_dim=16)
    inputs = forward_inputs(6, 5, 9, text_dim=16)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        assert use_gelu_epilogues(transformer) == 4  # the image and text MLP of each block
        ours = transformer(**inputs)[0]
    block = transformer.transformer_blocks[1]
    assert isinstance(block.img_mlp.net[0], EpilogueGELU)
    assert isinstance(block.txt_mlp.net[0], EpilogueGELU)
    assert relative_error(ours, stock) < 1e-7
    assert use_gelu_epilogues(transformer) == 0  # nothing left to swap


def test_fp8_projections_keep_their_own_path() -> None:
    transformer = random_transformer(layers=3, heads=2, text_dim=16)
    transformer.to(torch.bfloat16)
    quantise_blocks(transformer, rowwise=True, bf16_edge_blocks=1)
    assert isinstance(transformer.transformer_blocks[1].img_mlp.net[0].proj, Fp8Linear)
    assert use_gelu_epilogues(transformer) == 4  # the first and last block, in bf16
    assert not isinstance(transformer.transformer_blocks[1].img_mlp.net[0], EpilogueGELU)


def test_an_epilogue_block_compiles_once_for_every_size_and_text_length() -> None:
    transformer = random_transformer(layers=2, heads=3, text_dim=16)
    use_gelu_epilogues(transformer)
    new_graphs, compiled, eager = compile_blocks_and_vary_shapes(transformer, text_dim=16)
    assert new_graphs == 0
    assert relative_error(compiled, eager) < 1e-6
