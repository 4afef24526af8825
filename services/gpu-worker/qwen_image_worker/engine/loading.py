"""Where the pipeline comes from: a diffusers folder (MODEL_PATH) or the built-in demo model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from qwen_image_worker.engine.demo_edit_model import build_demo_edit_pipeline
from qwen_image_worker.engine.demo_model import build_demo_pipeline
from qwen_image_worker.engine.model_kind import DEMO_EDIT_MODEL_PATH, pipeline_kind

logger = logging.getLogger(__name__)

_REQUIRED_PARTS = (
    "model_index.json",
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("DEVICE=cuda but no CUDA device is visible to this process")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_pipeline(model_path: str | None, device: torch.device) -> Any:
    """The pipeline class the folder's model_index.json names (None: the text-to-image demo,
    DEMO_EDIT_MODEL_PATH: the edit demo). bf16 on a GPU, float32 on the CPU (bf16 matmuls on
    a CPU are slow and no more exact)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.monotonic()
    pipe: DiffusionPipeline
    if model_path is None:
        logger.info("building the demo model (tiny random weights) on %s", device)
        pipe = build_demo_pipeline().to(dtype=dtype)
    elif model_path.strip().lower() == DEMO_EDIT_MODEL_PATH:
        logger.info("building the demo edit model (tiny random weights) on %s", device)
        pipe = build_demo_edit_pipeline().to(dtype=dtype)
    else:
        folder = Path(model_path)
        missing = [part for part in _REQUIRED_PARTS if not (folder / part).exists()]
        if missing:
            raise RuntimeError(
                f"MODEL_PATH={model_path} is not a diffusers Qwen-Image folder: missing "
                f"{', '.join(missing)}. Point it at a copy of Qwen/Qwen-Image, or set "
                "MODEL_PATH=demo for the built-in demo model."
            )
        kind = pipeline_kind(model_path)
        logger.info("loading a %s from %s on %s (%s)", kind.class_name, folder, device, dtype)
        pipeline_class = getattr(diffusers, kind.class_name)
        pipe = pipeline_class.from_pretrained(folder, dtype=dtype, local_files_only=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("model ready on %s in %.1f s", device, time.monotonic() - started)
    return pipe
