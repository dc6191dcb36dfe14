"""GRPO for flow-matching video models: group advantages, the clipped-ratio loss, step selection.

References:
    - Flow-GRPO (Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL",
      github.com/yifan123/flow_grpo): the ODE is turned into a marginal-preserving SDE so
      every denoising step is a Gaussian policy (:func:`lyra_rl.sampling.sde_step`), trained
      with a PPO-style clipped ratio and a closed-form KL to the reference model
      (:func:`lyra_rl.sampling.gaussian_kl`); "Flow-GRPO-Fast" uses the SDE on a few trained
      steps only.
    - DanceGRPO (Xue et al. 2025, github.com/XueZeyue/DanceGRPO): trains on a random subset
      (about 60 %) of the denoising steps of each trajectory.
    - MixGRPO (Li et al. 2025): the SDE (and training) only inside a sliding window of
      steps, the ODE outside it.

Equations, for a group ``G`` of samples generated from the same condition with rewards ``r``:

.. math::

    A_i = \\mathrm{clip}\\Big(\\frac{r_i - \\mathrm{mean}_{j \\in G}\\, r_j}
                                {\\mathrm{std}_{j \\in G}\\, r_j + \\epsilon}, -c, c\\Big),

(the std of the whole batch instead with ``scale="batch"``, no division with ``scale="none"``),
and per trained step, with ``rho = exp(log_prob - old_log_prob)`` and clip range ``eps``:

.. math::

    L = \\mathrm{mean}_i \\max\\big(-A_i \\rho_i,\\;
        -A_i\\, \\mathrm{clip}(\\rho_i, 1 - \\varepsilon, 1 + \\varepsilon)\\big)
        + \\beta\\, \\mathrm{mean}_i\\, \\mathrm{KL}_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

REWARD_SCALINGS = ("group", "batch", "none")


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    scale: str = "group",
    eps: float = 1e-4,
    clip: float | None = 5.0,
) -> Tensor:
    """Group-relative advantages: rewards centred on their group's mean, scaled as trl's ``scale_rewards`` says.

    ``A = (r - mean_G(r)) / (std + eps)``, with ``std`` the group's (``"group"``), that of the whole
    batch (``"batch"``, PPO Lite), or no division (``"none"``, Dr. GRPO); then clamped to
    ``[-clip, clip]``. Stds are *unbiased* sample stds (``torch.std``'s default, ``correction=1``),
    as trl's GRPO uses. A group of size 1 has advantage 0.

    The statistics are those of the rows passed in: in a multi-process run the caller gathers
    the rewards and group ids of every process (e.g. ``accelerator.gather``) before calling,
    so every group is complete, then keeps its own slice of the result.

    Args:
        rewards: one reward per sample with shape :math:`(N,)`.
        group_ids: integer group of each sample (samples of the same condition share it), with
            shape :math:`(N,)`; any integer labels, not necessarily contiguous.
        scale: ``"group"``, ``"batch"`` or ``"none"``.
        eps: positive constant added to the std.
        clip: positive bound on ``|A|``, or None for no clipping.

    Returns:
        advantages with shape :math:`(N,)`, float32 (float64 for float64 rewards).

    Raises:
        ValueError: on mismatched or non-1-D shapes, non-integer ``group_ids``, an unknown ``scale``,
            ``eps <= 0`` or ``clip <= 0``.
    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both have shape (N,), got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if scale not in REWARD_SCALINGS:
        raise ValueError(f"scale must be one of {REWARD_SCALINGS}, got {scale!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    rewards = rewards.to(dtype)
    _, index, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    counts = counts.to(dtype)
    sums = torch.zeros_like(counts).index_add_(0, index, rewards)
    centred = rewards - (sums / counts)[index]
    advantages = centred
    if scale == "group":
        squares = torch.zeros_like(counts).index_add_(0, index, centred**2)
        std = torch.sqrt(squares / (counts - 1.0).clamp(min=1.0))
        advantages = centred / (std[index] + eps)
    elif scale == "batch":
        advantages = centred / ((rewards.std() if len(rewards) > 1 else 0.0) + eps)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages


def grpo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    kl: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-style clipped surrogate loss of one trained denoising step, plus an optional KL term.

    ``ratio = exp(log_prob - old_log_prob)``;
    ``loss = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip_range, 1 + clip_range))) + beta * mean(kl)``.
    ``old_log_prob`` and ``advantages`` are treated as constants (detached). Where the ratio
    is outside the clip range in the direction the advantage pushes it, the clamped term wins
    and that sample's gradient is zero.

    Args:
        log_prob: log-probs under the current policy with shape :math:`(B,)` (carries the gradient).
        old_log_prob: log-probs recorded at rollout with shape :math:`(B,)`.
        advantages: advantages with shape :math:`(B,)`.
        clip_range: PPO clip range ``eps > 0`` (Flow-GRPO uses about 1e-4 for images and videos).
        kl: per-sample KL to the reference policy with shape :math:`(B,)`, or None.
        beta: KL weight, ``>= 0``; a positive ``beta`` needs ``kl``.

    Returns:
        the scalar loss and detached metrics: ``ratio_mean``, ``ratio_min``, ``ratio_max``,
        ``clip_fraction`` (fraction of samples with ``|ratio - 1| > clip_range``),
        ``policy_loss`` and ``kl`` (mean KL, 0 when ``kl`` is None), all 0-d tensors.

    Raises:
        ValueError: on shapes that are not the same :math:`(B,)`, ``clip_range <= 0``,
            ``beta < 0``, or ``beta > 0`` without ``kl``.
    """
    if log_prob.ndim != 1:
        raise ValueError(f"log_prob must have shape (B,), got {tuple(log_prob.shape)}")
    named = {"old_log_prob": old_log_prob, "advantages": advantages}
    if kl is not None:
        named["kl"] = kl
    for name, tensor in named.items():
        if tensor.shape != log_prob.shape:
            raise ValueError(
                f"{name} must have the shape of log_prob {tuple(log_prob.shape)}, got {tuple(tensor.shape)}"
            )
    if not clip_range > 0:
        raise ValueError(f"clip_range must be positive, got {clip_range}")
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    if beta > 0 and kl is None:
        raise ValueError("beta > 0 needs the kl tensor")
    advantages = advantages.detach()
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    kl_mean = kl.mean() if kl is not None else torch.zeros_like(policy_loss)
    loss = policy_loss + beta * kl_mean
    ratio_detached = ratio.detach()
    metrics = {
        "ratio_mean": ratio_detached.mean(),
        "ratio_min": ratio_detached.min(),
        "ratio_max": ratio_detached.max(),
        "clip_fraction": ((ratio_detached - 1.0).abs() > clip_range).to(ratio_detached.dtype).mean(),
        "policy_loss": policy_loss.detach(),
        "kl": kl_mean.detach(),
    }
    return loss, metrics


def select_timesteps(
    num_steps: int,
    fraction: float | None = None,
    window: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of the denoising steps to train on.

    - ``fraction``: a random subset of ``ceil(fraction * num_steps)`` steps (DanceGRPO); the
      product is rounded to 9 decimals first, so ``0.7 * 10`` gives 7, not 8.
    - ``window = (start, size)``: the contiguous steps ``[start, start + size)`` (MixGRPO-style
      sliding window; the caller moves ``start`` during training).
    - neither: all steps.

    Args:
        num_steps: number of denoising steps of a trajectory, at least 1.
        fraction: share of steps to draw, in ``(0, 1]``.
        window: ``(start, size)`` with ``0 <= start``, ``size >= 1``, ``start + size <= num_steps``.
        generator: CPU random generator for the ``fraction`` draw (seed it to reproduce).

    Returns:
        sorted int64 step indices with shape :math:`(K,)`.

    Raises:
        ValueError: if ``num_steps < 1``, both ``fraction`` and ``window`` are given, ``fraction``
            is not in ``(0, 1]`` or the window is out of range.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if fraction is not None and window is not None:
        raise ValueError("give at most one of fraction and window")
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        size = math.ceil(round(fraction * num_steps, 9))
        return torch.randperm(num_steps, generator=generator)[:size].sort().values
    if window is not None:
        start, size = window
        if start < 0 or size < 1 or start + size > num_steps:
            raise ValueError(
                f"window (start, size) = {window} must satisfy 0 <= start, 1 <= size, start + size <= {num_steps}"
            )
        return torch.arange(start, start + size)
    return torch.arange(num_steps)


def sde_step_mask(num_steps: int, train_steps: Tensor | Sequence[int]) -> Tensor:
    """Which rollout steps use the SDE: the trained ones; the others use the ODE.

    Flow-GRPO-Fast and MixGRPO sample stochastically (and record log-probs) only on the steps
    that are trained, and deterministically elsewhere, which keeps the rollouts cheaper and
    closer to the ODE sampler used at inference.

    Args:
        num_steps: number of denoising steps, at least 1.
        train_steps: step indices with shape :math:`(K,)`, e.g. from :func:`select_timesteps`.

    Returns:
        a bool mask with shape :math:`(num\\_steps,)`, True on the SDE steps.

    Raises:
        ValueError: if ``num_steps < 1``, ``train_steps`` is not 1-D integer or has an index
            outside ``[0, num_steps)``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    steps = torch.as_tensor(train_steps)
    if steps.ndim != 1 or (steps.numel() > 0 and (steps.dtype.is_floating_point or steps.dtype == torch.bool)):
        raise ValueError(f"train_steps must be 1-D integer indices, got shape {tuple(steps.shape)} and {steps.dtype}")
    if steps.numel() > 0 and (int(steps.min()) < 0 or int(steps.max()) >= num_steps):
        raise ValueError(f"train_steps must lie in [0, {num_steps}), got {steps.tolist()}")
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[steps.long()] = True
    return mask
