"""The MLP's first matmul with its GELU in the matmul's epilogue (lever GELU_EPILOGUE, on).

Qwen-Image's blocks run `gelu_tanh(x @ W + b)` on a hidden 4x as wide as the model (at
1328x1328, 169 MB a block): as two kernels the hidden is written by the matmul, read and
written again by the GELU. On CUDA, `torch._addmm_activation(..., use_gelu=True)` hands
the GELU to cuBLASLt's GELU_BIAS epilogue, one write in all, rounding to bf16 once instead
of twice; where cuBLASLt does not take a shape, PyTorch runs the two steps, with the same
tanh approximation on every CUDA path (pytorch/pytorch#104061); docs/performance.md has
what it gains. On a CPU that operator computes the exact
(erf) GELU, another function, so there the two steps run as diffusers writes them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from torch import nn


class EpilogueGELU(nn.Module):
    """Stands in for diffusers' `GELU(approximate="tanh")`, keeping its `proj`."""

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.device.type != "cuda":
            return F.gelu(self.proj(hidden_states), approximate="tanh")
        flat = hidden_states.flatten(0, -2)
        out = torch._addmm_activation(self.proj.bias, flat, self.proj.weight.t(), use_gelu=True)
        return out.unflatten(0, hidden_states.shape[:-1])


def use_gelu_epilogues(transformer: nn.Module) -> int:
    """Swap every tanh GELU whose projection is a plain Linear with a bias for an
    `EpilogueGELU`; returns how many. Run after FP8, which replaces some projections: an
    FP8 one is not an `nn.Linear` and keeps its own path."""
    swapped = 0
    parent: Any
    for parent in list(transformer.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, GELU) or child.approximate != "tanh":
                continue
            proj = child.proj
            if type(proj) is not nn.Linear or proj.bias is None:
                continue
            setattr(parent, name, EpilogueGELU(proj))
            swapped += 1
    return swapped
