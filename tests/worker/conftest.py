from __future__ import annotations

import pytest
import torch

from qwen_image_worker.engine.generation import Engine, ImageSpec
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
