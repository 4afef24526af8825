from __future__ import annotations

import pytest
import torch
from diffusers import QwenImageTransformer2DModel

from qwen_image_worker.engine.base import ImageSpec
from qwen_image_worker.engine.generation import Engine
from qwen_image_worker.engine.loading import load_pipeline


@pytest.fixture(scope="session")
def engine() -> Engine:
    torch.set_num_threads(1)
    return Engine(load_pipeline(None, torch.device("cpu")))


def spec(**overrides: object) -> ImageSpec:
    values: dict[str, object] = {
        "prompt": "a red fox in the snow",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "guidance_scale": 4.0,
        "seed": 7,
    }
    values.update(overrides)
    return ImageSpec(**values)  # type: ignore[arg-type]


def random_transformer(layers: int, heads: int, text_dim: int) -> QwenImageTransformer2DModel:
    """A small transformer with random weights from seed 0; more heads and layers than the
    demo model, so head splits and the edge blocks are exercised."""
    torch.manual_seed(0)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=layers,
        attention_head_dim=16,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        axes_dims_rope=(8, 4, 4),
    ).eval()


def forward_inputs(tokens_h: int, tokens_w: int, text: int, text_dim: int) -> dict[str, object]:
    """A batch of two (cond and uncond) with random latents and text for one forward."""
    return {
        "hidden_states": torch.randn(2, tokens_h * tokens_w, 16),
        "encoder_hidden_states": torch.randn(2, text, text_dim),
        "timestep": torch.full((2,), 0.5),
        "img_shapes": [[(1, tokens_h, tokens_w)]] * 2,
        "return_dict": False,
    }
