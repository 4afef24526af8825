"""Qwen-Image's flow-matching scheduler, made safe for a single step.

Qwen-Image's scheduler stretches its sigmas so that the last lands on `shift_terminal`
(0.02), dividing by 1 minus the last sigma. With one step the only sigma is the first, 1,
and diffusers (0.42) divides 0 by 0 (its issue 14411): a NaN latent, a black image. With
one point there is nothing to stretch, so one step goes from pure noise straight to 0.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SchedulerMixin


class SingleStepSafeScheduler(FlowMatchEulerDiscreteScheduler):
    def stretch_shift_to_terminal(self, t: torch.Tensor) -> torch.Tensor:
        if len(t) < 2:
            return t
        return super().stretch_shift_to_terminal(t)


def single_step_safe(scheduler: SchedulerMixin) -> SchedulerMixin:
    """`scheduler`, or where it is diffusers' flow-matching one with a terminal stretch, the
    same configuration in the class above."""
    if type(scheduler) is not FlowMatchEulerDiscreteScheduler:
        return scheduler
    if not scheduler.config.get("shift_terminal"):
        return scheduler
    return SingleStepSafeScheduler.from_config(scheduler.config)
