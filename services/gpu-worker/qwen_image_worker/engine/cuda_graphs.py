"""Stands in for the transformer's forward: the SDPA kernel order around each call, and CUDA
graphs of whole forwards at launch-bound sizes.

The text mask needs no lever: the stock pipeline drops an all-ones mask, so one prompt, or a
batch of prompts of one length, reaches the transformer without one. A batch of prompts of
different lengths brings a mask (padding must not be attended to; DESIGN.md section 6: a
mask costs 10-25 % per forward). Its path used to break graph capture with one host-to-device
copy; `capture_safe_text_lengths` computes the same without it, so masked forwards are
captured too.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.transformers import transformer_qwenimage
from torch.nn.attention import SDPBackend, sdpa_kernel

from qwen_image_common.contract import PIXELS_PER_TOKEN
from qwen_image_worker.engine.paired_cfg import forward_output

logger = logging.getLogger(__name__)

# Runs before a graph capture, on a side stream: they compile, plan the attention kernel and
# fill diffusers' per-shape RoPE caches, so the capture itself records kernels only.
_CAPTURE_WARMUP_RUNS = 2
# Graphs are per (image size, text length, batch); the least recently used beyond this go.
_MAX_GRAPHS = 64


@dataclass
class GraphStats:
    captured: int = 0
    replayed: int = 0
    failed: int = 0


# The tensors a graph reads, copied into its static buffers before each replay.
_GRAPH_INPUTS = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask", "timestep")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


# The keyword arguments of QwenImageTransformer2DModel.forward (diffusers 0.42); a call with
# any other, or with one of _UNGRAPHED_ARGS set, runs without a graph.
_FORWARD_ARGS = {
    "hidden_states",
    "encoder_hidden_states",
    "encoder_hidden_states_mask",
    "timestep",
    "img_shapes",
    "guidance",
    "attention_kwargs",
    "controlnet_block_samples",
    "additional_t_cond",
    "return_dict",
}
_UNGRAPHED_ARGS = ("guidance", "controlnet_block_samples", "additional_t_cond")


def capture_safe_text_lengths(
    encoder_hidden_states: torch.Tensor, encoder_hidden_states_mask: torch.Tensor | None
) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
    """diffusers' `compute_text_seq_len_from_mask` (0.42), the same values without its one
    host-to-device copy (`torch.as_tensor` of a Python int), which a CUDA graph capture
    refuses: with this, a forward with a text mask (a batch of prompts of different
    lengths) can be captured too."""
    batch_size, text_seq_len = encoder_hidden_states.shape[:2]
    mask = encoder_hidden_states_mask
    if mask is None:
        return text_seq_len, None, None
    if mask.shape[:2] != (batch_size, text_seq_len):
        raise ValueError(
            f"`encoder_hidden_states_mask` shape {mask.shape} must match "
            f"(batch_size, text_seq_len)=({batch_size}, {text_seq_len})."
        )
    mask = mask.to(torch.bool)
    positions = torch.arange(text_seq_len, device=mask.device, dtype=torch.long)
    active = torch.where(mask, positions, positions.new_zeros(()))
    per_sample_len = torch.where(
        mask.any(dim=1), active.max(dim=1).values + 1, positions.new_full((), text_seq_len)
    )
    return text_seq_len, per_sample_len, mask


class AcceleratedForward:
    """Stands in for `transformer.forward`: sets the SDPA kernel order around each call, and
    replays a CUDA graph of the whole forward for small images (DESIGN.md: at 512x512 a graph
    runs 3.4x faster than eager launches).

    A graph is captured per (image shape, text length, batch, text mask or none, `img_shapes`:
    an edit's pictures' shapes too) on first use, into one memory pool that all graphs share
    (they never run at the same time); the first use of a new prompt length at a small size pays
    for a capture (three forwards). Only calls it can replay exactly take the graph path: no
    guidance, no ControlNet, inference mode, at most `graph_max_pixels` worth of tokens (an
    edit's pictures counted). If a capture fails, graphs are switched off (for masked calls
    only, when the failed capture had a mask) and those calls run without one.
    """

    def __init__(
        self,
        forward: Callable[..., Any],
        sdpa_order: list[SDPBackend] | None,
        graph_max_pixels: int,
    ) -> None:
        self._forward = forward
        self._sdpa_order = sdpa_order
        self._graph_max_tokens = graph_max_pixels // PIXELS_PER_TOKEN
        self._graph_masks = self._graph_max_tokens > 0
        if self._graph_masks:
            transformer_qwenimage.compute_text_seq_len_from_mask = capture_safe_text_lengths
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._pool: Any = None
        self.stats = GraphStats()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "attention_kwargs" in kwargs and not kwargs["attention_kwargs"]:
            # The pipeline passes {}, a graph capture None: the same forward, but compiled
            # blocks guard on which, so one would compile every variant twice.
            kwargs["attention_kwargs"] = None
        with self._sdpa():
            key = None if args else self._graph_key(kwargs)
            if key is None:
                return self._forward(*args, **kwargs)
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(key, kwargs)
                if entry is None:
                    return self._forward(**kwargs)
            self._graphs.move_to_end(key)
            for name, buffer in entry.inputs.items():
                buffer.copy_(kwargs[name])
            entry.graph.replay()
            self.stats.replayed += 1
            # The graph's output buffer is rewritten by the next replay: hand out a copy.
            out = entry.output.clone()
        return forward_output(out, kwargs)

    def _sdpa(self) -> contextlib.AbstractContextManager[None]:
        if self._sdpa_order is None:
            return contextlib.nullcontext()
        return sdpa_kernel(self._sdpa_order, set_priority=True)

    def _graph_key(self, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        """The graph's identity for a call it can replay exactly, else None."""
        hidden = kwargs.get("hidden_states")
        text = kwargs.get("encoder_hidden_states")
        timestep = kwargs.get("timestep")
        mask = kwargs.get("encoder_hidden_states_mask")
        if self._graph_max_tokens <= 0 or set(kwargs) - _FORWARD_ARGS:
            return None
        if not (
            isinstance(hidden, torch.Tensor)
            and isinstance(text, torch.Tensor)
            and isinstance(timestep, torch.Tensor)
        ):
            return None
        if mask is not None and not (self._graph_masks and isinstance(mask, torch.Tensor)):
            return None
        if any(kwargs.get(name) is not None for name in _UNGRAPHED_ARGS):
            return None
        if kwargs.get("attention_kwargs") or not hidden.is_cuda:
            return None
        if hidden.shape[1] > self._graph_max_tokens or not torch.is_inference_mode_enabled():
            return None
        if torch.cuda.is_current_stream_capturing():
            return None
        return (
            tuple(hidden.shape),
            tuple(text.shape),
            tuple(timestep.shape),
            None if mask is None else (tuple(mask.shape), mask.dtype),
            hidden.dtype,
            text.dtype,
            timestep.dtype,
            repr(kwargs.get("img_shapes")),
        )

    def _capture(self, key: tuple[Any, ...], kwargs: dict[str, Any]) -> _Graph | None:
        inputs = {
            name: kwargs[name].clone()
            for name in _GRAPH_INPUTS
            if isinstance(kwargs.get(name), torch.Tensor)
        }
        static = inputs | {"img_shapes": kwargs.get("img_shapes"), "return_dict": False}
        masked = "encoder_hidden_states_mask" in inputs
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(_CAPTURE_WARMUP_RUNS):
                    self._forward(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                output = self._forward(**static)[0]
        except Exception:
            # A failed capture is about the model or the kernels, not this shape: stop trying
            # (masked calls only, when this one had a mask).
            logger.warning(
                "CUDA graph capture failed for %s%s; CUDA graphs are off from now on%s",
                key[:3],
                " with a text mask" if masked else "",
                " for calls with a text mask" if masked else "",
                exc_info=True,
            )
            if masked:
                self._graph_masks = False
            else:
                self._graph_max_tokens = 0
            self.stats.failed += 1
            return None
        entry = _Graph(graph, inputs, output)
        self._graphs[key] = entry
        self.stats.captured += 1
        while len(self._graphs) > _MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return entry
