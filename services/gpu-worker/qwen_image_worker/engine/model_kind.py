"""Which Qwen-Image pipeline a model folder holds, read without torch.

The worker reports its task before the model has loaded (the router learns its pools from
the load answers), so the folder's `model_index.json` is read on its own, at start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qwen_image_common.contract import MAX_EDIT_PICTURES, Task

DEMO_MODEL_PATHS = ("", "demo")
DEMO_EDIT_MODEL_PATH = "demo-edit"


@dataclass(frozen=True)
class PipelineKind:
    """A diffusers pipeline class the worker serves, what it does, how many pictures it takes."""

    class_name: str
    task: Task
    max_pictures: int = 0


GENERATOR = PipelineKind("QwenImagePipeline", "generate")
EDITOR = PipelineKind("QwenImageEditPlusPipeline", "edit", MAX_EDIT_PICTURES)
KINDS = {
    kind.class_name: kind
    for kind in (GENERATOR, EDITOR, PipelineKind("QwenImageEditPipeline", "edit", 1))
}


def pipeline_kind(model_path: str) -> PipelineKind:
    """The demo names, or the class a diffusers folder's model_index.json names."""
    path = model_path.strip()
    if path.lower() in DEMO_MODEL_PATHS:
        return GENERATOR
    if path.lower() == DEMO_EDIT_MODEL_PATH:
        return EDITOR
    index = Path(path) / "model_index.json"
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(
            f"MODEL_PATH={model_path} is not a diffusers Qwen-Image folder: cannot read "
            f"_class_name from {index} ({exc}). Point it at a copy of a Qwen-Image model, or "
            f"set MODEL_PATH=demo or MODEL_PATH={DEMO_EDIT_MODEL_PATH} for a built-in demo."
        ) from None
    if class_name not in KINDS:
        raise RuntimeError(
            f"MODEL_PATH={model_path} holds a {class_name}; this worker serves {', '.join(KINDS)}"
        )
    return KINDS[class_name]
