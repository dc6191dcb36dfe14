"""Rollouts of a video policy along a flow-matching schedule, with per-step log-probs (Flow-GRPO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .policy import VideoPolicy
from .sampling import classifier_free_guidance, ode_step, sde_step


@dataclass
class Rollout:
    """A batch of denoising trajectories.

    Attributes:
        states: latents before and after every step ``(S + 1, B, C, T', H', W')``; ``states[-1]`` is the sample.
        log_probs: ``(B, S)`` log-prob of each SDE step's transition (0 on ODE steps).
    """

    states: Tensor
    log_probs: Tensor


def guided_velocity(policy: VideoPolicy, x: Tensor, t: Tensor, cond: Any, uncond: Any = None, guidance_scale: float = 1.0) -> Tensor:
    """The policy's velocity, with classifier-free guidance toward ``cond`` and away from ``uncond``
    when ``guidance_scale != 1`` (two forward passes; ``uncond`` is e.g. the negative prompt's condition)."""
    v = policy.velocity(x, t, cond)
    if uncond is None or guidance_scale == 1.0:
        return v
    return classifier_free_guidance(v, policy.velocity(x, t, uncond), guidance_scale)


def micro_batches(total: int, size: int | None) -> list[slice]:
    """Consecutive slices of at most ``size`` samples covering ``total`` (one slice when ``size`` is None)."""
    size = size or total
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


@torch.no_grad()
def rollout(
    policy: VideoPolicy,
    cond: Any,
    noise: Tensor,
    sigmas: Tensor,
    sde_mask: Tensor,
    noise_level: float,
    step_noise: Tensor | None,
    uncond: Any = None,
    guidance_scale: float = 1.0,
    micro_batch_size: int | None = None,
) -> Rollout:
    """Denoises ``noise (B, C, T', H', W')`` from ``sigmas[0]`` to ``sigmas[-1]``.

    Steps where ``sde_mask (S,)`` is True use Flow-GRPO's SDE with the standard normal draws
    ``step_noise[k]`` (``(S, B, C, T', H', W')``; drawn by the caller so that each sample's randomness
    depends on its global index only, not on how the batch is split over processes); they can be
    trained, since their transition has a log-prob. The others use the Euler ODE (Flow-GRPO-Fast / MixGRPO);
    with no SDE step at all (evaluation), ``step_noise`` may be None.
    With ``guidance_scale != 1`` every step uses :func:`guided_velocity`. With ``micro_batch_size`` the
    velocities are computed in slices of that many samples (less memory; the same slices as the update's,
    so that its replayed steps reproduce the rollout's numbers exactly).
    """
    states, log_probs = [noise], torch.zeros(len(noise), len(sigmas) - 1)
    x = noise
    for k in range(len(sigmas) - 1):
        t = sigmas[k].expand(len(x))
        v = torch.cat([
            guided_velocity(policy, x[part], t[part], cond[part], None if uncond is None else uncond[part], guidance_scale)
            for part in micro_batches(len(x), micro_batch_size)
        ])
        if sde_mask[k]:
            step = sde_step(x, v, sigmas[k], sigmas[k + 1], noise_level, noise=step_noise[k])
            x, log_probs[:, k] = step.prev_sample, step.log_prob.float().cpu()
        else:
            x = ode_step(x, v, sigmas[k], sigmas[k + 1])
        states.append(x)
    return Rollout(torch.stack(states), log_probs)
