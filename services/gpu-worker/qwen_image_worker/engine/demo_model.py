"""A tiny `QwenImagePipeline` with random weights: the real code path, no download.

Every module is built from a fixed seed, so every worker holds the same model and the same
job gives the same pixels on any of them. The sizes are tuned so that a 1024x1024, 50-step
image takes seconds on a 2-core CPU (one transformer layer with one 16-wide head, a VAE
whose widest layer has few channels). The pictures are noise-like, honestly.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import pre_tokenizers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

DEMO_SEED = 20250804
_TEXT_HIDDEN = 16
_TEXT_VOCAB = 320
_LATENT_CHANNELS = 4
_HEAD_DIM = 16
# Qwen-Image's scheduler (its scheduler/scheduler_config.json), so the demo samples the same
# timesteps as the real model: shifted by image size, stretched to end at 0.02.
QWEN_IMAGE_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
}


def build_demo_pipeline(num_layers: int = 1) -> QwenImagePipeline:
    """The demo model, in float32 on the CPU; the caller moves it where it runs.

    `num_layers` > 1 gives a deeper transformer (tests and the benchmark's --tiny run): the
    modes that treat blocks differently (FP8's bf16 edge blocks, the step cache) need several.
    """
    torch.manual_seed(DEMO_SEED)
    tokenizer = demo_tokenizer()
    parts = demo_parts(tokenizer, num_layers, vae_res_blocks=0)
    pipe = QwenImagePipeline(tokenizer=tokenizer, **parts)
    fit_template_prefix(
        tokenizer, pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    )
    check_vocab(tokenizer)
    return pipe


def demo_tokenizer() -> Qwen2Tokenizer:
    """Byte-level: the 256 byte symbols and Qwen's chat tokens, nothing to download."""
    tokenizer = Qwen2Tokenizer(
        vocab={symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))},
        merges=[],
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]}
    )
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    return tokenizer


def demo_parts(
    tokenizer: Qwen2Tokenizer,
    num_layers: int,
    vae_res_blocks: int,
    text_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Scheduler, VAE, text encoder and transformer, drawn from the global torch seed.

    `vae_res_blocks=0` is the fastest VAE and decodes fine, but its encoder fails; a pipeline
    that encodes pictures (the editor) needs 1. `text_config` adds to the text encoder's
    config (the editor's vision token ids)."""
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=_LATENT_CHANNELS * 4,
        out_channels=_LATENT_CHANNELS,
        num_layers=num_layers,
        attention_head_dim=_HEAD_DIM,
        num_attention_heads=1,
        joint_attention_dim=_TEXT_HIDDEN,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=_LATENT_CHANNELS,
        dim_mult=[1, 1, 2, 2],
        num_res_blocks=vae_res_blocks,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * _LATENT_CHANNELS,
        latents_std=[1.0] * _LATENT_CHANNELS,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "hidden_size": _TEXT_HIDDEN,
                "intermediate_size": _TEXT_HIDDEN,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "vocab_size": _TEXT_VOCAB,
                "rope_scaling": {
                    "mrope_section": [1, 1, 2],
                    "rope_type": "default",
                    "type": "default",
                },
                "rope_theta": 1000000.0,
                "bos_token_id": None,
                "eos_token_id": tokenizer.eos_token_id,
            },
            vision_config={
                "depth": 1,
                "hidden_size": _TEXT_HIDDEN,
                "intermediate_size": _TEXT_HIDDEN,
                "num_heads": 2,
                "out_hidden_size": _TEXT_HIDDEN,
            },
            hidden_size=_TEXT_HIDDEN,
            vocab_size=_TEXT_VOCAB,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            **(text_config or {}),
        )
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER),
        "vae": vae,
        "text_encoder": text_encoder,
        "transformer": transformer,
    }


def check_vocab(tokenizer: Qwen2Tokenizer) -> None:
    if len(tokenizer) > _TEXT_VOCAB:
        raise RuntimeError(f"demo tokenizer has {len(tokenizer)} tokens, more than {_TEXT_VOCAB}")


def fit_template_prefix(tokenizer: Qwen2Tokenizer, template: str, drop: int) -> None:
    """Add word tokens for the template's system instruction, joining or splitting words until
    the part before the user's turn is exactly the `drop` tokens the pipeline cuts off, so
    embeddings start at the user's turn (the prompt, or the one-picture editor's picture)."""
    user_turn = "<|im_start|>user\n"
    prefix = template[: template.index(user_turn) + len(user_turn)]
    system = prefix.split("system\n", 1)[1].split("<|im_end|>", 1)[0]
    words = re.findall(r"\s*\S+", system)
    others = len(tokenizer(prefix.replace(system, ""))["input_ids"])
    while others + len(words) > drop and len(words) > 1:
        words[-2:] = [words[-2] + words[-1]]
    while others + len(words) < drop and max(map(len, words)) > 1:
        longest = max(range(len(words)), key=lambda i: len(words[i]))
        word = words[longest]
        words[longest : longest + 1] = [word[: len(word) // 2], word[len(word) // 2 :]]
    tokenizer.add_tokens(words)
    got = len(tokenizer(prefix)["input_ids"])
    if got != drop:
        raise RuntimeError(
            f"demo tokenizer: template prefix is {got} tokens, pipeline drops {drop}"
        )
