"""First-block step cache: an opt-in fast mode, not lossless.

Neighbouring denoising steps change most blocks' work little. Every forward runs the first
block; when its residual (image-stream output minus input) moved by less than `threshold`
(mean absolute change over mean absolute size) since the last forward that ran every block,
the other blocks are skipped and the residuals they added then are added again. This is
ParaAttention's First Block Cache, TeaCache's model-agnostic cousin. The cond and uncond
passes keep separate states, named by the `cache_context` the pipeline opens around each;
the pipeline resets them at the end of every call (and `Engine.generate` after a failed one).

Why not diffusers' own `apply_first_block_cache`: its hooks decide inside the blocks, so with
the blocks compiled (`fullgraph=True`) the decision (`torch.compiler.disable`, `.item()`)
breaks the graph and compilation fails. Here the decision sits between compiled blocks. It is
a branch on the host, so a forward with it cannot be one CUDA graph: `accelerate` turns
graphs off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
from torch import nn

_HOOK_NAME = "qwen_image_step_cache"


@dataclass
class CacheStats:
    """Forwards that ran every block, and forwards that ran the first block only."""

    computed: int = 0
    skipped: int = 0


class _BranchState(BaseState):
    """One pass's (cond or uncond) residuals from its last forward that ran every block."""

    def __init__(self) -> None:
        self.head_residual: torch.Tensor | None = None
        self.image_residual: torch.Tensor | None = None
        self.text_residual: torch.Tensor | None = None

    def reset(self) -> None:
        self.head_residual = self.image_residual = self.text_residual = None


class _ContextHook(ModelHook):
    """Carries the states where diffusers looks for them: `cache_context` names the current
    one on every stateful hook's StateManager, and the end-of-call reset clears them."""

    _is_stateful = True

    def __init__(self, states: StateManager) -> None:
        super().__init__()
        self.states = states

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.states.reset()
        return module


class CachedBlocks(nn.Module):
    """Stands in for the transformer's blocks: its block loop makes one call, into this,
    which runs the first block, then the others or the cached residuals."""

    def __init__(self, blocks: nn.ModuleList, threshold: float) -> None:
        super().__init__()
        self.blocks = blocks
        self.threshold = threshold
        self.stats = CacheStats()
        self._states = StateManager(_BranchState)
        registry = HookRegistry.check_if_exists_or_initialize(self)
        registry.register_hook(_ContextHook(self._states), _HOOK_NAME)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        head, *rest = self.blocks
        text, image = head(
            hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, **kwargs
        )
        state = self._state()
        residual = image - hidden_states
        if state is not None and self._unchanged(residual, state):
            assert state.text_residual is not None and state.image_residual is not None
            self.stats.skipped += 1
            return text + state.text_residual, image + state.image_residual
        text_out, image_out = text, image
        for block in rest:
            text_out, image_out = block(
                hidden_states=image_out, encoder_hidden_states=text_out, **kwargs
            )
        if state is not None:
            state.head_residual = residual
            state.image_residual = image_out - image
            state.text_residual = text_out - text
        self.stats.computed += 1
        return text_out, image_out

    def _state(self) -> _BranchState | None:
        """The current pass's state; None when called outside a pipeline's cache_context
        (then every block runs and nothing is kept)."""
        try:
            state: _BranchState = self._states.get_state()
        except ValueError:
            return None
        return state

    def _unchanged(self, residual: torch.Tensor, state: _BranchState) -> bool:
        previous = state.head_residual
        if previous is None or previous.shape != residual.shape:
            return False
        change = (residual - previous).abs().mean(dtype=torch.float32)
        size = previous.abs().mean(dtype=torch.float32).clamp_min(1e-12)
        return bool((change / size).item() < self.threshold)


def install_step_cache(transformer: Any, threshold: float) -> CachedBlocks:
    """Route `transformer`'s block loop through a CachedBlocks; returns it (for its stats).

    Install after FP8 (which finds blocks by index) and in any order with compilation (the
    blocks inside stay what `compile_repeated_blocks` looks for).
    """
    cached = CachedBlocks(transformer.transformer_blocks, threshold)
    transformer.transformer_blocks = nn.ModuleList([cached])
    # diffusers caches the list of hook registries under the transformer; this one is new.
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return cached
