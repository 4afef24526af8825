"""Partial images of a streamed job: the picture the model predicts at a step, decoded by
the pipeline's own VAE at the final size (a real preview, not a placeholder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import QwenImagePipeline
from PIL import Image


def decode(
    pipe: QwenImagePipeline, packed: torch.Tensor, width: int, height: int
) -> list[Image.Image]:
    """Packed latents (batch, tokens, channels) to pictures, as the pipeline's last section
    decodes its result."""
    vae = pipe.vae
    latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor).to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    pixels = vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
    images: Sequence[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return list(images)
