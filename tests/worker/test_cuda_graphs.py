"""What of the graphed forward runs on the CPU: the capture-safe text lengths, and one
compiled block for a pipeline call and a graph capture."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers.models.transformers import transformer_qwenimage

from qwen_image_worker.engine.cuda_graphs import AcceleratedForward, capture_safe_text_lengths

from .conftest import forward_inputs, random_transformer

# Read at import: on a CPU nothing installs the capture-safe version before this.
STOCK_TEXT_LENGTHS = transformer_qwenimage.compute_text_seq_len_from_mask


@pytest.mark.parametrize("case", ["no mask", "padded", "holes", "an empty row"])
def test_capture_safe_text_lengths_equal_diffusers_own(case: str) -> None:
    assert STOCK_TEXT_LENGTHS is not capture_safe_text_lengths
    torch.manual_seed(0)
    text = torch.randn(3, 7, 4)
    lengths = torch.tensor([7, 3, 5])
    masks = {
        "no mask": None,
        "padded": torch.arange(7)[None, :] < lengths[:, None],
        "holes": torch.rand(3, 7) > 0.5,
        "an empty row": torch.tensor([[1] * 7, [0] * 7, [1, 1, 0, 0, 0, 0, 0]]),
    }
    ours = capture_safe_text_lengths(text, masks[case])
    theirs = STOCK_TEXT_LENGTHS(text, masks[case])
    assert ours[0] == theirs[0] == 7
    for mine, stock in zip(ours[1:], theirs[1:], strict=True):
        assert (mine is None and stock is None) or torch.equal(mine, stock)
    if case == "padded":
        assert ours[1] is not None and ours[1].tolist() == [7, 3, 5]


def compiled_graphs(second_call_kwargs: dict[str, Any] | None) -> int:
    """Graphs dynamo compiles for a pipeline-style call (attention_kwargs={}) followed by a
    call with `second_call_kwargs` (None: a graph capture's, without attention_kwargs)."""
    transformer = random_transformer(layers=2, heads=2, text_dim=24)
    transformer.forward = AcceleratedForward(transformer.forward, None, graph_max_pixels=0)
    torch._dynamo.reset()
    try:
        for block in transformer.transformer_blocks:
            block.compile(fullgraph=True, dynamic=True, backend="aot_eager")
        torch._dynamo.utils.counters.clear()
        with torch.no_grad():
            transformer(**forward_inputs(4, 6, 9, text_dim=24), attention_kwargs={})
            transformer(**forward_inputs(4, 6, 9, text_dim=24), **(second_call_kwargs or {}))
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    finally:
        torch._dynamo.reset()


def test_a_pipeline_call_and_a_graph_capture_share_one_compiled_block() -> None:
    """The pipeline passes attention_kwargs={}, a graph capture passes none; compiled blocks
    guard on which, so without the wrapper's normalising each block variant compiles twice.
    The reference is the same pipeline call twice, as the graphs the blocks need at all depend
    on PyTorch's version."""
    assert compiled_graphs(None) == compiled_graphs({"attention_kwargs": {}})
