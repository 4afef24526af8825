"""FP8 matmuls for the transformer blocks: an opt-in fast mode, not lossless.

Hopper's tensor cores multiply e4m3 matrices at twice their bf16 rate, and the block matmuls
are about 70 % of a Qwen-Image forward at 1328x1328. `quantise_blocks` swaps each block's
attention and MLP Linear layers (both streams) for `Fp8Linear`: the weight is quantised once,
the input on every call, each with float32 scales, one per row (weight output channel,
activation token) or one per matrix; `torch._scaled_mm` multiplies the e4m3 matrices,
accumulates in float32, applies both scales and writes the input's dtype.

What stays in bf16, because small errors there reach every token: the embeddings, the
modulation (each block's shift, scale and gate from the timestep: one row, nothing to gain),
the norms, the final projection, and the first and last `bf16_edge_blocks` blocks.
Quantise after the model's last `.to()`: e4m3 is a floating dtype, and `.to(dtype)` would
cast the quantised weights as if they were plain numbers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
# torch._scaled_mm on CUDA wants both dimensions of the weight to be multiples of 16.
_MULTIPLE = 16
# Block children left in bf16: the timestep modulation of each stream.
_KEPT_IN_BF16 = ("img_mod", "txt_mod")
# The smallest scale: an all-zero row quantises to zeros instead of 0/0.
_TINY = 1e-12


def quantise(x: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` (2-D) as e4m3 values and float32 scales, x ~ values * scale.

    Row-wise: one scale per row, shape (rows, 1); else one for the matrix, shape (). The
    largest magnitude of each row (or of the matrix) maps to e4m3's largest finite value.
    """
    magnitude = x.abs()
    amax = magnitude.amax(dim=-1, keepdim=True) if rowwise else magnitude.amax()
    scale = amax.float().clamp_min(_TINY) / E4M3_MAX
    values = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return values, scale


class Fp8Linear(nn.Module):
    """A Linear layer whose matmul runs in e4m3; keeps only the quantised weight.

    `weight` is (out, in) row-major, so `weight.t()` is the column-major operand that
    `torch._scaled_mm` wants; `weight_scale` is (1, out) for row-wise scaling, else ().
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        rowwise: bool,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.rowwise = rowwise
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear, rowwise: bool) -> Fp8Linear:
        values, scale = quantise(linear.weight.detach(), rowwise)
        return cls(values, scale.reshape(1, -1) if rowwise else scale, linear.bias, rowwise)

    def rows(self, start: int, end: int, bias: torch.Tensor | None) -> Fp8Linear:
        """Output channels start..end as a layer of their own, sharing this one's memory
        (the Q, K and V projections are views into a fused QKV layer; see `fuse_qkv`)."""
        scale = self.weight_scale[:, start:end] if self.rowwise else self.weight_scale
        return Fp8Linear(self.weight[start:end], scale, bias, self.rowwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, scale = quantise(x.reshape(-1, self.in_features), self.rowwise)
        if self.rowwise and values.device.type == "cpu":
            out = _row_scaled_mm_on_cpu(values, self.weight.t(), scale, self.weight_scale, x.dtype)
        else:
            out = torch._scaled_mm(
                values.contiguous(),
                self.weight.t(),
                scale_a=scale,
                scale_b=self.weight_scale,
                out_dtype=x.dtype,
                use_fast_accum=True,
            )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        scaling = "row" if self.rowwise else "tensor"
        return f"in_features={self.in_features}, out_features={self.out_features}, {scaling}"


def _row_scaled_mm_on_cpu(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """PyTorch's CPU `_scaled_mm` takes one scale per operand: the same FP8 product with unit
    scales, then each row's and column's scale, as the GPU kernel's epilogue applies them."""
    one = torch.ones((), dtype=torch.float32, device=a.device)
    product = torch._scaled_mm(a.contiguous(), b, scale_a=one, scale_b=one, out_dtype=torch.float32)
    return (product * scale_a * scale_b).to(out_dtype)


@dataclass
class Fp8Report:
    """What `quantise_blocks` did: layers now in FP8, and blocks left in bf16."""

    layers: int = 0
    blocks: int = 0
    bf16_blocks: int = 0
    ineligible_layers: int = 0


def quantise_blocks(transformer: nn.Module, rowwise: bool, bf16_edge_blocks: int) -> Fp8Report:
    """Put the matmuls of every block but the first and last `bf16_edge_blocks` in FP8."""
    blocks: Any = transformer.transformer_blocks
    count = len(blocks)
    chosen = range(bf16_edge_blocks, count - bf16_edge_blocks)
    report = Fp8Report(bf16_blocks=count - len(chosen))
    for index in chosen:
        quantised, ineligible = _quantise_block(blocks[index], rowwise)
        report.layers += quantised
        report.ineligible_layers += ineligible
        report.blocks += 1 if quantised else 0
    logger.info(
        "FP8 (%s-wise) matmuls in %d of %d blocks: %d layers (%d left in bf16: shape)",
        "row" if rowwise else "tensor",
        report.blocks,
        count,
        report.layers,
        report.ineligible_layers,
    )
    return report


def _quantise_block(block: nn.Module, rowwise: bool) -> tuple[int, int]:
    """Returns (layers quantised, layers whose shape _scaled_mm does not take)."""
    # Linear layers whose weights share memory form one group: a fused QKV layer and the
    # per-projection views into it. The one holding the whole storage is quantised, and
    # the others become row ranges of its FP8 weight.
    groups: dict[int, list[tuple[str, nn.Linear]]] = defaultdict(list)
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[0] not in _KEPT_IN_BF16:
            groups[module.weight.untyped_storage().data_ptr()].append((name, module))
    quantised = ineligible = 0
    for group in groups.values():
        owner_name, owner = max(group, key=lambda item: item[1].weight.numel())
        if any(m.in_features % _MULTIPLE or m.out_features % _MULTIPLE for _, m in group):
            ineligible += len(group)
            continue
        fp8 = Fp8Linear.from_linear(owner, rowwise)
        block.set_submodule(owner_name, fp8)
        base = int(owner.weight.storage_offset())
        for name, view in group:
            if view is owner:
                continue
            start = int(view.weight.storage_offset() - base) // owner.in_features
            block.set_submodule(name, fp8.rows(start, start + view.out_features, view.bias))
        quantised += len(group)
    return quantised, ineligible
