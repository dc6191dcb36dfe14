"""Flow-matching supervised fine-tuning (action-conditioned SFT): the noised sample, its velocity target,
the training timesteps and the loss.

Convention (``docs/conventions.md#timesteps``): ``x_t = (1 - t) x0 + t eps``, ``v = eps - x0``, ``t = 1`` is
noise. Training timesteps follow the sampler's schedule: ``u ~ U(0, 1)`` mapped by the same shift as
:func:`lyra_rl.sampling.shifted_sigmas` (``t = shift u / (1 + (shift - 1) u)``), so training spends its
samples where sampling spends its steps (Wan trains with the shift it samples with).

.. math::

    L = \\mathrm{mean}_i\\; \\mathrm{mean}_{c, f, h, w}\\,
        \\big(v_\\theta(x_{t_i}, t_i \\mid c_i) - (\\varepsilon_i - x_{0,i})\\big)^2
"""

from __future__ import annotations

import torch
from torch import Tensor


def shifted_timesteps(batch_size: int, shift: float, generator: torch.Generator | None = None) -> Tensor:
    """Training times ``t (B,)`` in ``(0, 1)``: uniform draws mapped by the sampler's shift (see the module)."""
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    return (shift * u / (1.0 + (shift - 1.0) * u)).float()


def noised_sample(x0: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``x_t = (1 - t) x0 + t eps`` and the velocity target ``eps - x0`` for clean latents ``x0 (B, *)``,
    standard normal ``noise (B, *)`` and times ``t (B,)``."""
    if x0.shape != noise.shape or t.shape != x0.shape[:1]:
        raise ValueError(f"x0 {tuple(x0.shape)}, noise {tuple(noise.shape)} and t {tuple(t.shape)} do not fit")
    t = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise, noise - x0


def flow_matching_loss(velocity: Tensor, target: Tensor) -> Tensor:
    """The mean squared error between predicted and target velocities ``(B, *)``: a scalar, in float32 at least
    (bf16 predictions are upcast first)."""
    if velocity.shape != target.shape:
        raise ValueError(f"velocity {tuple(velocity.shape)} and target {tuple(target.shape)} differ")
    dtype = torch.promote_types(velocity.dtype, torch.float32)
    return (velocity.to(dtype) - target.to(dtype)).square().mean()
