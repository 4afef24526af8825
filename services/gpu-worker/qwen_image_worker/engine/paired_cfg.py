"""True CFG's two transformer forwards of a step, run as one forward of twice the batch.

diffusers' QwenImagePipeline (0.42) calls the transformer twice a step, with the prompt's
text and then the negative prompt's, on the same latents; so do the edit pipelines, whose
latents are the image's followed by the pictures' (one tensor for both calls), and whose
`encode_prompt` takes the pictures too. At small sizes a forward is
launch-bound: on an H200 at 512x512 one forward of a batch of two took 0.068 s against
2 x 0.038 s for two of one. This lever joins them: the first call runs
both halves (texts padded to one length and masked, as a batch of jobs is) and answers with
the prompt's half; the second is answered with the negative's half without a forward.

It knows the two calls by their text: it records what the pipeline's `encode_prompt`
returned (the prompt's, then the negative prompt's embeddings) and matches those very
tensors; the second call must come next and bring the latents of the first. Any other call runs
unchanged, so a pipeline that calls the transformer otherwise only loses the saving, and an
answer is only ever the forward of the text and latents it is given for. Padding and the
mask keep each half the function it was alone, up to the bf16 rounding of another batch
shape (the same as for batched jobs). The size limit is on the tokens a forward carries,
decided per call: an edit's pictures count (about 4096 tokens each at the edit pipelines'
1024x1024 VAE size), so an edit is joined only under a limit that covers them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from qwen_image_common.contract import PIXELS_PER_TOKEN

_Text = tuple[torch.Tensor, torch.Tensor | None]  # embeddings and mask, as encoded


class PairedGuidance:
    """Stands in for `transformer.forward` (outside AcceleratedForward, so the joined
    forward is compiled and graphed like any other) and wraps `pipe.encode_prompt`."""

    def __init__(
        self, forward: Callable[..., Any], encode_prompt: Callable[..., Any], max_pixels: int
    ) -> None:
        self._forward = forward
        self._encode_prompt = encode_prompt
        self._max_tokens = max_pixels // PIXELS_PER_TOKEN
        # The last two encodings: during a pipeline call with true CFG, its prompt's and its
        # negative prompt's (a call without CFG encodes once and is never joined).
        self._encoded: deque[_Text] = deque(maxlen=2)
        self._joined: tuple[torch.Tensor, torch.Tensor, _Text] | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # latents, answer
        self.joined = 0  # steps whose two forwards ran as one

    def encode_prompt(self, *args: Any, **kwargs: Any) -> Any:
        embeds, mask = self._encode_prompt(*args, **kwargs)
        self._encoded.append((embeds, mask))
        self._pending = None
        return embeds, mask

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden = kwargs.get("hidden_states")
        text = kwargs.get("encoder_hidden_states")
        pending, self._pending = self._pending, None
        if (
            args
            or len(self._encoded) < 2
            or not isinstance(hidden, torch.Tensor)
            or hidden.shape[1] > self._max_tokens
            or kwargs.get("guidance") is not None
        ):
            return self._forward(*args, **kwargs)
        cond, uncond = self._encoded
        if pending is not None and text is uncond[0] and pending[0] is hidden:
            return forward_output(pending[1], kwargs)
        if text is not cond[0]:
            return self._forward(**kwargs)
        known = self._joined
        if known is None or known[0] is not cond[0] or known[1] is not uncond[0]:
            self._joined = known = (cond[0], uncond[0], _join(cond, uncond))
        joined_text, joined_mask = known[2]
        joined = kwargs | {
            "hidden_states": torch.cat([hidden, hidden]),
            "timestep": torch.cat([kwargs["timestep"], kwargs["timestep"]]),
            "encoder_hidden_states": joined_text,
            "encoder_hidden_states_mask": joined_mask,
            "img_shapes": list(kwargs["img_shapes"]) * 2,
            "return_dict": False,
        }
        cond_out, uncond_out = self._forward(**joined)[0].chunk(2)
        self._pending = (hidden, uncond_out)
        self.joined += 1
        return forward_output(cond_out, kwargs)


def _join(cond: _Text, uncond: _Text) -> _Text:
    """Both texts as one batch: padded on the right to the longer, masked where padded (no
    mask when neither needs one)."""
    length = max(cond[0].shape[1], uncond[0].shape[1])
    texts, masks = [], []
    for embeds, mask in (cond, uncond):
        batch, own = embeds.shape[:2]
        if mask is None:
            mask = torch.ones(batch, own, dtype=torch.long, device=embeds.device)
        texts.append(torch.nn.functional.pad(embeds, (0, 0, 0, length - own)))
        masks.append(torch.nn.functional.pad(mask, (0, length - own)))
    joined_mask = torch.cat(masks)
    return torch.cat(texts), None if bool(joined_mask.all()) else joined_mask


def forward_output(sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """What the transformer's forward returns for a call with `kwargs`, holding `sample`."""
    if kwargs.get("return_dict", True):
        return Transformer2DModelOutput(sample=sample)
    return (sample,)
