"""Rollouts of a video policy along a flow-matching schedule, with per-step log-probs (Flow-GRPO).

:func:`denoising_step` is the one step every caller takes: the rollout draws with it, the update replays the
stored transitions with it under the policy and under the adapter-disabled reference, evaluation samples
with it (timestep conventions: ``docs/conventions.md#timesteps``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .policy import VideoPolicy
from .sampling import StepOutput, classifier_free_guidance, ode_step, sde_step, shifted_sigmas


@dataclass
class Rollout:
    """A batch of denoising trajectories.

    Attributes:
        states: latents before and after every step ``(S + 1, B, C, T', H', W')``; ``states[-1]`` is the sample.
        log_probs: ``(B, S)`` log-prob of each SDE step's transition (0 on ODE steps).
    """

    states: Tensor
    log_probs: Tensor


def guided_velocity(
    policy: VideoPolicy, x: Tensor, t: Tensor, cond: Any, uncond: Any = None, guidance_scale: float = 1.0
) -> Tensor:
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


def denoising_step(
    policy: VideoPolicy,
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    cond: Any,
    uncond: Any = None,
    guidance_scale: float = 1.0,
    noise_level: float = 0.0,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """One denoising step of ``x (B, C, T', H', W')`` from ``sigma`` to ``sigma_next`` (0-d tensors).

    The policy's velocity (:func:`guided_velocity`), then with ``noise_level > 0`` Flow-GRPO's SDE step
    (:func:`~lyra_rl.sampling.sde_step`), which draws ``mean + std * noise`` or, given ``prev_sample``, scores
    that stored transition; with ``noise_level = 0`` the Euler ODE step (``log_prob`` 0, ``std`` 0). The
    rollout and its replay take the same step on the same (micro-)batches, so that replaying with unchanged
    weights reproduces the rollout's log-probs bit for bit.
    """
    v = guided_velocity(policy, x, sigma.to(x.device).expand(len(x)), cond, uncond, guidance_scale)
    if noise_level > 0:
        return sde_step(x, v, sigma, sigma_next, noise_level, prev_sample=prev_sample, noise=noise)
    x_next = ode_step(x, v, sigma, sigma_next)
    zeros = torch.zeros(len(x), device=x.device)
    return StepOutput(prev_sample=x_next, mean=x_next, std=zeros.new_zeros(()), log_prob=zeros)


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
    """Denoises ``noise (B, C, T', H', W')`` from ``sigmas[0]`` to ``sigmas[-1]`` with :func:`denoising_step`.

    Steps where ``sde_mask (S,)`` is True use Flow-GRPO's SDE with the standard normal draws
    ``step_noise[k]`` (``(S, B, C, T', H', W')``; drawn by the caller so that each sample's randomness
    depends on its global index only, not on how the batch is split over processes); they can be
    trained, since their transition has a log-prob. The others use the Euler ODE (Flow-GRPO-Fast / MixGRPO);
    with no SDE step at all (evaluation), ``step_noise`` may be None. With ``micro_batch_size`` each step runs
    in slices of that many samples (less memory; the update replays the same slices).
    """
    states, log_probs = [noise], torch.zeros(len(noise), len(sigmas) - 1)
    x = noise
    for k in range(len(sigmas) - 1):
        steps = [
            denoising_step(
                policy,
                x[part],
                sigmas[k],
                sigmas[k + 1],
                cond[part],
                None if uncond is None else uncond[part],
                guidance_scale,
                noise_level if sde_mask[k] else 0.0,
                noise=step_noise[k][part] if sde_mask[k] else None,
            )
            for part in micro_batches(len(x), micro_batch_size)
        ]
        x = torch.cat([step.prev_sample for step in steps])
        if sde_mask[k]:  # ODE steps have no log-prob (0)
            log_probs[:, k] = torch.cat([step.log_prob for step in steps]).float().cpu()
        states.append(x)
    return Rollout(torch.stack(states), log_probs)


@torch.no_grad()
def ode_sample(
    policy: VideoPolicy,
    cond: Any,
    noise: Tensor,
    num_steps: int,
    shift: float,
    uncond: Any = None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """Deterministic samples, as evaluation draws them: ``noise (B, C, T', H', W')`` denoised by the Euler ODE
    over ``shifted_sigmas(num_steps, shift)`` (:func:`rollout` without an SDE step); the sampled latents
    ``(B, C, T', H', W')``."""
    sigmas = shifted_sigmas(num_steps, shift).to(noise.device)
    ode = torch.zeros(num_steps, dtype=torch.bool)
    return rollout(policy, cond, noise, sigmas, ode, 0.0, None, uncond, guidance_scale).states[-1]
