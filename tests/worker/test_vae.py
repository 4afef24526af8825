"""The VAE's levers on the CPU: the same picture."""

from __future__ import annotations

import torch

from qwen_image_worker.engine.acceleration import relative_error
from qwen_image_worker.engine.demo_model import build_demo_pipeline
from qwen_image_worker.engine.vae import use_conv2d_for_single_frames


def test_vae_single_frame_conv2d_decodes_the_same_image() -> None:
    vae = build_demo_pipeline().vae.eval()
    latents = torch.randn(1, 4, 1, 12, 10)
    with torch.no_grad():
        stock = vae.decode(latents).sample
        assert use_conv2d_for_single_frames(vae) > 10
        fast = vae.decode(latents).sample
    assert fast.shape == stock.shape
    assert relative_error(fast, stock) < 1e-5
