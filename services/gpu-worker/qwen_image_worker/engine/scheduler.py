"""Qwen-Image's flow-matching scheduler, made safe for a single step and able to say what
picture the model predicts.

Qwen-Image's scheduler stretches its sigmas so that the last lands on `shift_terminal`
(0.02), dividing by 1 minus the last sigma. With one step the only sigma is the first, 1,
and diffusers (0.42) divides 0 by 0 (its issue 14411): a NaN latent, a black image. With
one point there is nothing to stretch, so one step goes from pure noise straight to 0.

Streamed jobs show partial images: the clean latent the model predicts after a step. The
pipeline's step callback sees only the new latent, so the scheduler keeps the velocity of
its last step; an Euler step `x' = x + (s' - s) v` makes the prediction `x' - s' v`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SchedulerMixin


class PredictingScheduler(FlowMatchEulerDiscreteScheduler):
    """Keeps the last step's velocity, for `predicted_clean`."""

    velocity: torch.Tensor | None = None

    @property
    def predicts(self) -> bool:
        """Whether its steps are plain Euler steps (stochastic sampling adds fresh noise)."""
        return not self.config.stochastic_sampling

    def step(self, model_output: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.velocity = model_output
        return super().step(model_output, *args, **kwargs)

    def predicted_clean(self, latents: torch.Tensor) -> torch.Tensor:
        """The clean latent the last step aims at, from the latent it made."""
        assert self.velocity is not None and self.step_index is not None
        sigma = self.sigmas[self.step_index].to(latents.device, torch.float32)
        return latents.float() - sigma * self.velocity.float()


class SingleStepSafeScheduler(PredictingScheduler):
    def stretch_shift_to_terminal(self, t: torch.Tensor) -> torch.Tensor:
        if len(t) < 2:
            return t
        return super().stretch_shift_to_terminal(t)


def serving_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """`scheduler`, or where it is diffusers' flow-matching one, the same configuration in
    one of the classes above (the single-step guard where it stretches to a terminal)."""
    if type(scheduler) is not FlowMatchEulerDiscreteScheduler:
        return scheduler
    if scheduler.config.get("shift_terminal"):
        return SingleStepSafeScheduler.from_config(scheduler.config)
    return PredictingScheduler.from_config(scheduler.config)
