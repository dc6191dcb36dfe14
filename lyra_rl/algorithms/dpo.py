"""Flow-DPO: direct preference optimisation of a flow-matching model on (winner, loser) pairs.

References:
    - Diffusion-DPO (Wallace et al. 2024, arXiv 2311.12908): DPO's objective bounded through the diffusion
      ELBO, with the policy's and the reference's denoising errors on the same noised winner and loser.
    - Flow-DPO (VideoAlign, Liu et al. 2025, arXiv 2501.13918): the same with the flow-matching velocity
      target ``v = eps - x0`` (``beta`` about 100 for video; Diffusion-DPO's ``beta`` about 5000 is for
      eps-prediction); Epipolar-DPO (arXiv 2510.21615) ranks the pairs by Sampson error.

For a pair noised with the same ``t`` and ``eps`` (``docs/conventions.md#timesteps``), with per-sample mean
squared velocity errors ``e = mean (v_model(x_t) - (eps - x0))^2``:

.. math::

    L = -\\log \\sigma\\Big(-\\frac{\\beta}{2}\\big[(e^\\theta_w - e^\\mathrm{ref}_w)
        - (e^\\theta_l - e^\\mathrm{ref}_l)\\big]\\Big)

``L = log 2`` where the policy is the reference; it falls as the policy fits the winner better, and the loser
worse, than the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def velocity_errors(velocity: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared velocity errors ``(B,)`` of ``velocity`` and ``target`` ``(B, *)``, in float32
    at least."""
    if velocity.shape != target.shape:
        raise ValueError(f"velocity {tuple(velocity.shape)} and target {tuple(target.shape)} differ")
    dtype = torch.promote_types(velocity.dtype, torch.float32)
    return (velocity.to(dtype) - target.to(dtype)).square().flatten(1).mean(1)


def flow_dpo_loss(
    policy_winner: Tensor,
    policy_loser: Tensor,
    reference_winner: Tensor,
    reference_loser: Tensor,
    beta: float,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Flow-DPO's loss (see the module) from the per-sample velocity errors ``(B,)`` of the policy and the
    reference on each pair's winner and loser.

    Args:
        policy_winner, policy_loser, reference_winner, reference_loser: velocity errors ``(B,)``
            (:func:`velocity_errors`); the reference's carry no gradient.
        beta: the preference strength (VideoAlign's Flow-DPO uses about 100 for video).
        weights: per-pair weights ``(B,)``: the loss is then ``sum_i w_i L_i`` (e.g. 0 for a pair left out, and
            ``1 / n`` over the ``n`` pairs kept); default, the mean over the pairs.

    Returns:
        the loss, and the implicit reward margin ``-beta / 2 [(e_w - e_w^ref) - (e_l - e_l^ref)]`` per pair
        ``(B,)`` (positive: the policy prefers the winner more than the reference does).
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    margin = -0.5 * beta * ((policy_winner - reference_winner) - (policy_loser - reference_loser))
    losses = -F.logsigmoid(margin)
    if weights is None:
        return losses.mean(), margin.detach()
    if weights.shape != losses.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must have the pairs' shape {tuple(losses.shape)}")
    return (weights.to(losses) * losses).sum(), margin.detach()


def candidate_pairs(rewards: Tensor, group_size: int, all_pairs: bool = False) -> tuple[Tensor, Tensor]:
    """(winner, loser) row indices ``(P, 2)`` within groups of ``group_size`` consecutive rollouts of ``rewards
    (B,)``, and each pair's reward margin ``(P,)`` (NaN where either reward is NaN): each group's best against
    its worst (``P = B / group_size``), or (``all_pairs``) every two rollouts of a group, the better one first
    (``P = B (group_size - 1) / 2``). A fixed number of pairs per group, whatever the rewards: a trainer runs
    the same passes on every process and leaves a pair out by its weight."""
    if rewards.ndim != 1 or len(rewards) % group_size or group_size < 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} do not split into groups of {group_size} (at least 2)")
    pairs = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        if all_pairs:
            candidates = [(i, j) if not group[j] > group[i] else (j, i) for i in range(group_size) for j in range(i)]
        else:
            best = int(group.nan_to_num(nan=float("-inf")).argmax())
            worst = int(group.nan_to_num(nan=float("inf")).argmin())
            candidates = [(best, worst)]
        pairs += [(start + i, start + j) for i, j in candidates]
    pairs = torch.tensor(pairs, dtype=torch.long).view(-1, 2)
    return pairs, rewards[pairs[:, 0]] - rewards[pairs[:, 1]]


def preference_pairs(rewards: Tensor, group_size: int, min_margin: float = 0.0, all_pairs: bool = False) -> Tensor:
    """The :func:`candidate_pairs` ``(P, 2)`` whose rewards differ by more than ``min_margin`` (none where either
    reward is NaN)."""
    pairs, margins = candidate_pairs(rewards, group_size, all_pairs)
    return pairs[margins > min_margin]
