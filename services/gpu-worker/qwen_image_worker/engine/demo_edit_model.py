"""A tiny Qwen-Image editor with random weights: the editor's real code path.

The same parts as the text-to-image demo (same seed, same sizes), plus what editing needs: a
Qwen2-VL processor built in code (its image processor sized so a picture is a few vision
tokens, the byte-level tokenizer with the vision tokens added) and a VAE whose encoder runs.
"""

from __future__ import annotations

import torch
from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

from qwen_image_worker.engine.demo_model import (
    DEMO_SEED,
    check_vocab,
    demo_parts,
    demo_tokenizer,
    fit_template_prefix,
)

# The vision tower sees 14-pixel patches merged 2x2: 28x28 pixels a token. At most 16 tokens
# a picture keeps the text encoder's share of an edit small on a CPU.
_VISION_PIXELS_PER_TOKEN = 28 * 28
_VISION_MAX_TOKENS = 16
_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def build_demo_edit_pipeline(
    num_layers: int = 1,
    pipeline_class: type[QwenImageEditPlusPipeline | QwenImageEditPipeline] = (
        QwenImageEditPlusPipeline
    ),
) -> QwenImageEditPlusPipeline | QwenImageEditPipeline:
    """The demo editor, in float32 on the CPU; the caller moves it where it runs. Both edit
    pipelines take the same parts: `pipeline_class` picks the one-to-three-picture editor
    (Qwen-Image-Edit-2509's) or the one-picture `QwenImageEditPipeline`."""
    torch.manual_seed(DEMO_SEED)
    tokenizer = demo_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(_VISION_TOKENS)})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _VISION_TOKENS}
    parts = demo_parts(
        tokenizer,
        num_layers,
        vae_res_blocks=1,
        text_config={
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
        },
    )
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=4 * _VISION_PIXELS_PER_TOKEN,
            max_pixels=_VISION_MAX_TOKENS * _VISION_PIXELS_PER_TOKEN,
        ),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )
    pipe = pipeline_class(tokenizer=tokenizer, processor=processor, **parts)
    fit_template_prefix(
        tokenizer, pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    )
    check_vocab(tokenizer)
    return pipe
