"""The VAE's levers: 2-D convolutions for single frames, channels-last weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d
from torch import nn


def use_conv2d_for_single_frames(vae: nn.Module) -> int:
    """Route the VAE's causal 3-D convolutions through 2-D ones when they see one frame.

    An image's latent has one frame (so do an edit's pictures, which the encoder's
    convolutions see), and a causal kernel of depth 2p+1 pads it with 2p
    zero frames in front, so only the kernel's last time slice ever meets data: a 2-D
    convolution with that slice is the same sum without the zero products (a third of the
    FLOPs of a 3x3x3 kernel). Returns how many convolutions were rerouted.
    """
    count = 0
    for module in vae.modules():
        if not isinstance(module, QwenImageCausalConv3d):
            continue
        conv: Any = module
        depth, front = conv.kernel_size[0], conv._padding[4]
        if depth != front + 1 or conv.stride[0] != 1 or conv.dilation != (1, 1, 1):
            continue
        if conv.groups != 1:
            continue
        conv.register_buffer(
            "weight_2d", conv.weight.detach()[:, :, -1].contiguous(), persistent=False
        )
        conv.forward = _single_frame_forward(conv, conv.forward)
        count += 1
    return count


def _single_frame_forward(
    conv: Any, stock: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    pad_w, _, pad_h, _, front, _ = conv._padding

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        # With cached frames in front (videos) the zero-padding argument does not hold.
        if x.shape[2] != 1 or (cache_x is not None and front > 0):
            return stock(x, cache_x)
        out = F.conv2d(
            x[:, :, 0],
            conv.weight_2d,
            conv.bias,
            stride=conv.stride[1:],
            padding=(pad_h, pad_w),
        )
        return out.unsqueeze(2)

    return forward


def to_channels_last(vae: nn.Module) -> None:
    """Channels-last convolution weights: cuDNN's tensor-core convolutions read NHWC natively,
    and a convolution whose weight is channels-last hands its layout on to its output."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for tensor in [*vae.parameters(), *vae.buffers()]:
        if tensor.dim() in formats:
            tensor.data = tensor.data.contiguous(memory_format=formats[tensor.dim()])
