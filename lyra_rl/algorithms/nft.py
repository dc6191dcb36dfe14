"""DiffusionNFT: online RL on the forward (noising) process of a flow-matching model.

Reference: Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process" (arXiv
2509.16117, github.com/NVlabs/DiffusionNFT). Rollouts come from any sampler and only their clean samples are
kept (no SDE, no log-probs). Each sample ``x0`` is noised afresh, ``x_t = (1 - t) x0 + t eps``
(``docs/conventions.md#timesteps``), and the trained velocity ``v_theta`` is mixed with the frozen sampling
policy's ``v_old`` into an implicit positive and negative policy:

.. math::

    v^+ = (1 - \\beta) v_\\mathrm{old} + \\beta v_\\theta, \\qquad
    v^- = (1 + \\beta) v_\\mathrm{old} - \\beta v_\\theta,

    L = r\\, \\|v^+ - (\\varepsilon - x_0)\\|^2_w + (1 - r)\\, \\|v^- - (\\varepsilon - x_0)\\|^2_w,

with ``r`` in ``[0, 1]`` the sample's optimality (its clipped group advantage mapped to ``[0, 1]``,
:func:`optimality`): good samples pull the positive policy towards them, bad ones push the negative policy
towards them, which pushes ``v_theta`` away. The norms are taken in ``x0``-space, ``x0_pred = x_t - t v``,
each divided by its own detached mean absolute error (the paper's adaptive weighting ``w``). Per sample, the
unweighted loss is minimised by ``v_theta = v_old + (2 r - 1) (eps - x0 - v_old) / beta``: the target for
``r = 1`` (with ``beta = 1``), ``v_old`` for ``r = 1/2``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def optimality(advantages: Tensor, clip: float = 1.0) -> Tensor:
    """Optimality ``r (B,)`` in ``[0, 1]`` of group advantages ``(B,)``: clipped to ``[-clip, clip]``, mapped
    linearly (advantage 0 is ``1/2``)."""
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    return (advantages.clamp(-clip, clip) / clip + 1) / 2


def _adaptive_x0_error(x0_pred: Tensor, x0: Tensor) -> Tensor:
    """Per-sample ``mean (x0_pred - x0)^2 / mean |x0_pred - x0|`` (the divisor detached, at least 1e-5)."""
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        weight = (x0_pred.double() - x0.double()).abs().mean(dims, keepdim=True).clamp_min(1e-5).to(x0_pred.dtype)
    return ((x0_pred - x0).square() / weight).mean(dims)


def nft_loss(
    velocity: Tensor,
    old_velocity: Tensor,
    x_t: Tensor,
    x0: Tensor,
    t: Tensor,
    r: Tensor,
    beta: float = 1.0,
    adaptive: bool = True,
) -> Tensor:
    """DiffusionNFT's loss (see the module), a scalar: the mean over samples of the optimality-weighted positive
    and negative terms, divided by ``beta``.

    Args:
        velocity: the trained policy's velocity at ``x_t``, ``(B, *)``.
        old_velocity: the sampling policy's (no gradient flows into it), ``(B, *)``.
        x_t: the noised samples ``(1 - t) x0 + t eps``, ``(B, *)``.
        x0: the clean samples, ``(B, *)``.
        t: flow times ``(B,)`` in ``(0, 1]``.
        r: the samples' optimality ``(B,)`` in ``[0, 1]`` (:func:`optimality`).
        beta: the mixing strength (the paper's ``beta``, 1 by default).
        adaptive: divide each term by its detached mean absolute ``x0`` error (the paper's weighting); without,
            plain squared ``x0`` errors.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not velocity.shape == old_velocity.shape == x_t.shape == x0.shape:
        raise ValueError(
            f"velocity {tuple(velocity.shape)}, old_velocity {tuple(old_velocity.shape)}, x_t {tuple(x_t.shape)} "
            f"and x0 {tuple(x0.shape)} must have one shape"
        )
    dtype = torch.promote_types(velocity.dtype, torch.float32)
    velocity, old_velocity = velocity.to(dtype), old_velocity.detach().to(dtype)
    x_t, x0 = x_t.to(dtype), x0.to(dtype)
    t = t.to(dtype).view(-1, *([1] * (x0.ndim - 1)))
    positive = (1 - beta) * old_velocity + beta * velocity
    negative = (1 + beta) * old_velocity - beta * velocity

    def error(v: Tensor) -> Tensor:
        x0_pred = x_t - t * v
        return _adaptive_x0_error(x0_pred, x0) if adaptive else (x0_pred - x0).square().flatten(1).mean(1)

    r = r.to(dtype)
    return ((r * error(positive) + (1 - r) * error(negative)) / beta).mean()
