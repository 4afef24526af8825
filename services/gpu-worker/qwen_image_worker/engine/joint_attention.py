"""Qwen-Image's joint attention with less memory traffic: the same arithmetic as diffusers'.

Three levers act here. Fused QKV: one projection matmul per stream instead of three. Real
RoPE: diffusers rotates Q and K as complex64 numbers, and torch.compile runs a complex
multiply as separate kernels through fp32 copies of Q and K (three round trips where one
does); written with real fp32 products it fuses with the RMS norm before it and the
concatenation after it. FlashAttention-3: the attention itself through FA3's Hopper kernel,
which takes Q, K and V in the layout built here, with no transposes: diffusers' `_flash_3`
backend where no text mask is needed, and, with `flash3_padded`, where one is (a batch whose
texts are padded: batched jobs, CFG's two forwards joined), FA3 over each image's used keys
(`seqused_k`), the joint sequence ordered image first so that the padding is what it leaves
out; else SDPA with a mask. All three change the order of rounding only
(`lossless_tolerance`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    dispatch_attention_fn,
)
from diffusers.models.transformers.transformer_qwenimage import (
    QwenDoubleStreamAttnProcessor2_0,
    apply_rotary_emb_qwen,
)
from diffusers.utils import is_flash_attn_3_available
from torch import nn

if is_flash_attn_3_available():  # FA3's wheel, which tools/fa3/build.sh builds
    from flash_attn_interface import _flash_attn_forward


def apply_rotary_emb_real(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """`apply_rotary_emb_qwen(x, freqs, use_real=False)` without complex tensors.

    x is (batch, tokens, heads, head_dim) with (a, b) = (real, imaginary) pairs along
    head_dim; freqs is complex (tokens, head_dim / 2), c + is. (a + ib)(c + is) =
    (ac - bs) + i(bc + as), in fp32 as diffusers computes it, then back to x's dtype.
    """
    return rotate(x, rotary_factors(freqs))


def rotary_factors(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c and (-s, s) of complex freqs (tokens, head_dim / 2), shaped to broadcast over
    heads: made once per stream, shared by its Q and K."""
    cos_sin = torch.view_as_real(freqs).unsqueeze(1)
    cos, sin = cos_sin[..., :1], cos_sin[..., 1:]
    return cos, torch.cat((-sin, sin), dim=-1)


def rotate(x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """pairs * c + swapped pairs * (-s, s), rather than a stack of the two parts: inductor
    fuses the swap as an index, where a stack is written out in fp32 first."""
    cos, signed_sin = factors
    pairs = x.float().unflatten(-1, (-1, 2))
    return (pairs * cos + pairs.flip(-1) * signed_sin).flatten(-2).type_as(x)


class JointAttnProcessor(QwenDoubleStreamAttnProcessor2_0):
    """diffusers' `QwenDoubleStreamAttnProcessor2_0.__call__` (0.42), step for step, with
    the projections taken fused where `fuse_qkv` fused them, RoPE in real arithmetic
    where `real_rope` asks for it, unmasked attention through FA3 where `flash3` does, and
    masked attention through FA3 over used keys where `flash3_padded` does too."""

    def __init__(self, real_rope: bool, flash3: bool = False, flash3_padded: bool = False) -> None:
        super().__init__()
        self.real_rope = real_rope
        self.flash3 = flash3
        self.flash3_padded = flash3_padded

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is None:
            raise ValueError("the joint attention needs encoder_hidden_states (text stream)")
        if attention_mask is not None:
            raise ValueError("the joint attention takes no external attention_mask")
        head_dim = attn.inner_dim // attn.heads
        img_query, img_key, img_value = _project(
            attn, hidden_states, "to_qkv", ("to_q", "to_k", "to_v"), head_dim
        )
        txt_query, txt_key, txt_value = _project(
            attn,
            encoder_hidden_states,
            "to_added_qkv",
            ("add_q_proj", "add_k_proj", "add_v_proj"),
            head_dim,
        )
        if attn.norm_q is not None:
            img_query = attn.norm_q(img_query)
        if attn.norm_k is not None:
            img_key = attn.norm_k(img_key)
        if attn.norm_added_q is not None:
            txt_query = attn.norm_added_q(txt_query)
        if attn.norm_added_k is not None:
            txt_key = attn.norm_added_k(txt_key)
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            rotate_img, rotate_txt = self._rotation(img_freqs), self._rotation(txt_freqs)
            img_query, img_key = rotate_img(img_query), rotate_img(img_key)
            txt_query, txt_key = rotate_txt(txt_query), rotate_txt(txt_key)
        img_joint, txt_joint = self._attention(
            (img_query, img_key, img_value),
            (txt_query, txt_key, txt_value),
            encoder_hidden_states_mask,
        )
        img_out = attn.to_out[0](img_joint.flatten(2, 3).contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)
        txt_out = attn.to_add_out(txt_joint.flatten(2, 3).contiguous())
        return img_out, txt_out

    def _attention(
        self,
        img: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        txt: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The joint attention: of a padded batch through FA3 over used keys where
        `flash3_padded`; else diffusers', [text, image], through FA3 where `flash3` and no
        text is padded, else SDPA with the padding masked."""
        if self.flash3_padded and text_mask is not None:
            return _flash3_over_used_keys(img, txt, text_mask)
        seq_txt = txt[0].shape[1]
        attention_mask = None
        if text_mask is not None:
            image_mask = img[0].new_ones(img[0].shape[:2], dtype=torch.bool)
            attention_mask = torch.cat([text_mask, image_mask], dim=1)[:, None, None, :]
        backend = self._attention_backend
        if self.flash3 and attention_mask is None:
            backend = AttentionBackendName._FLASH_3
        query, key, value = (torch.cat([t, i], dim=1) for t, i in zip(txt, img, strict=True))
        joint = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=backend,
            parallel_config=self._parallel_config,
        ).to(query.dtype)
        return joint[:, seq_txt:], joint[:, :seq_txt]

    def _rotation(self, freqs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """RoPE by one stream's freqs, for its Q and its K."""
        if self.real_rope:
            return partial(rotate, factors=rotary_factors(freqs))
        return partial(apply_rotary_emb_qwen, freqs_cis=freqs, use_real=False)


def _flash3_over_used_keys(
    img: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    txt: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    text_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint attention of a batch whose texts are padded (on the right, as diffusers'
    `encode_prompt` and the engine pad them), ordered [image, text] so that each element's
    padding is its last keys: FA3 attends over the first image + text-length keys of each,
    which is what SDPA's key mask computes, without a mask."""
    seq_img = img[0].shape[1]
    used = (text_mask.sum(dim=1) + seq_img).to(torch.int32)
    query, key, value = (torch.cat([i, t], dim=1) for i, t in zip(img, txt, strict=True))
    joint = attention_over_used_keys(query, key, value, used)
    return joint[:, :seq_img], joint[:, seq_img:]


@torch.library.custom_op("qwen_image::attention_over_used_keys", mutates_args=())
def attention_over_used_keys(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, used: torch.Tensor
) -> torch.Tensor:
    """Attention of every query of batch element b over its first `used[b]` keys; Q, K and V
    are (batch, tokens, heads, head_dim). On CUDA FA3 computes it (`seqused_k`); this, the
    reference on any other device, is SDPA with the other keys masked."""
    kept = torch.arange(key.shape[1], device=key.device)[None, :] < used[:, None]
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        attn_mask=kept[:, None, None, :],
    )
    return out.transpose(1, 2).contiguous()


@attention_over_used_keys.register_kernel("cuda")
def _flash3_attention_over_used_keys(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, used: torch.Tensor
) -> torch.Tensor:
    out, *_ = _flash_attn_forward(
        q=query,
        k=key,
        v=value,
        k_new=None,
        v_new=None,
        qv=None,
        out=None,
        cu_seqlens_q=None,
        cu_seqlens_k=None,
        cu_seqlens_k_new=None,
        seqused_q=None,
        seqused_k=used,
        max_seqlen_q=None,
        max_seqlen_k=None,
        page_table=None,
        kv_batch_idx=None,
        leftpad_k=None,
        rotary_cos=None,
        rotary_sin=None,
        seqlens_rotary=None,
        q_descale=None,
        k_descale=None,
        v_descale=None,
        softmax_scale=query.shape[-1] ** -0.5,
        causal=False,
    )
    return out


@attention_over_used_keys.register_fake
def _attention_over_used_keys_shape(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, used: torch.Tensor
) -> torch.Tensor:
    return query.new_empty(query.shape)


def _project(
    attn: Any, states: torch.Tensor, fused: str, separate: tuple[str, str, str], head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K and V of one stream as (batch, tokens, heads, head_dim): from one fused matmul
    when the attention has one, else from three."""
    projection = getattr(attn, fused, None)
    if projection is not None:
        query, key, value = projection(states).unflatten(-1, (3, -1, head_dim)).unbind(-3)
        return query, key, value
    query, key, value = (
        getattr(attn, name)(states).unflatten(-1, (-1, head_dim)) for name in separate
    )
    return query, key, value


# The one head dim tools/fa3/build.sh compiles FA3 for: Qwen-Image's.
FLASH3_HEAD_DIM = 128


def flash3_unavailable(device: torch.device, head_dim: int) -> str | None:
    """Why FA3 cannot run this model's attention on `device`, or None when it can."""
    if not is_flash_attn_3_available():
        return (
            "FlashAttention-3 is not installed: build its wheel with tools/fa3/build.sh and "
            "pip install it, or choose another ATTENTION_BACKEND (cudnn)"
        )
    if device.type != "cuda":
        return f"FlashAttention-3 runs on CUDA GPUs only, not on {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return (
            "FlashAttention-3's kernels are built for Hopper (compute capability 9.0); "
            f"this GPU is {major}.{minor}: choose another ATTENTION_BACKEND (cudnn)"
        )
    if head_dim != FLASH3_HEAD_DIM:
        return (
            f"the FlashAttention-3 wheel holds kernels for head dim {FLASH3_HEAD_DIM} (Qwen-"
            f"Image's) only; this model's is {head_dim}: choose another ATTENTION_BACKEND"
        )
    return None


def install_joint_attention(
    transformer: nn.Module,
    *,
    fuse: bool,
    real_rope: bool,
    flash3: bool = False,
    flash3_padded: bool = False,
) -> int:
    """Give every joint attention of `transformer` this module's processor, with its Q|K|V
    projections fused first if `fuse`; returns how many attentions it changed.

    The fused weights are new tensors and the old projections become views into them, so
    memory does not grow; a later `.to()` would copy the views apart, hence fuse last.
    """
    changed = 0
    module: Any
    for module in transformer.modules():
        if type(getattr(module, "processor", None)) is not QwenDoubleStreamAttnProcessor2_0:
            continue
        if fuse:
            module.to_qkv = _fuse_linears([module.to_q, module.to_k, module.to_v])
            module.to_added_qkv = _fuse_linears(
                [module.add_q_proj, module.add_k_proj, module.add_v_proj]
            )
        module.set_processor(JointAttnProcessor(real_rope, flash3, flash3_padded))
        changed += 1
    return changed


def _fuse_linears(linears: list[nn.Linear]) -> nn.Linear:
    first = linears[0]
    has_bias = all(linear.bias is not None for linear in linears)
    fused = nn.Linear(
        first.in_features,
        sum(linear.out_features for linear in linears),
        bias=has_bias,
        device="meta",
    )
    grad = first.weight.requires_grad
    fused.weight = nn.Parameter(
        torch.cat([linear.weight.detach() for linear in linears]), requires_grad=grad
    )
    if has_bias:
        fused.bias = nn.Parameter(
            torch.cat([linear.bias.detach() for linear in linears if linear.bias is not None]),
            requires_grad=grad,
        )
    start = 0
    for linear in linears:
        end = start + linear.out_features
        linear.weight = nn.Parameter(fused.weight.detach()[start:end], requires_grad=grad)
        if has_bias:
            linear.bias = nn.Parameter(fused.bias.detach()[start:end], requires_grad=grad)
        start = end
    return fused
