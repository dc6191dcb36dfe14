"""Pose-error metrics: per-pair rotation and translation-direction errors, and trajectory errors as
CamI2V and WorldScore report them.

Convention:
    See :mod:`lyra_rl.camera`. Errors compare ``cam_from_world`` poses; each function says whether it
    returns radians or degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kornia.metrics import angle_error_mat, angle_error_vec
from torch import Tensor

from .poses import invert_pose, relative_to_first, rotation_angle

__all__ = [
    "LyraCameraScore",
    "TrajectoryErrors",
    "lyra_camera_score",
    "optimal_scale",
    "pairwise_pose_errors",
    "trajectory_errors",
]


def pairwise_pose_errors(estimated: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair errors of relative poses ``j_from_i`` ``(*, 4, 4)`` (both of the same shape).

    Returns:
        Rotation error ``angle(R_est^T R_ref)`` in degrees ``(*)`` and translation-direction error in
        degrees ``(*)`` (NaN where the reference translation is zero: direction is undefined).
    """
    rotation_error = angle_error_mat(estimated[..., :3, :3], reference[..., :3, :3])
    return rotation_error, angle_error_vec(estimated[..., :3, 3], reference[..., :3, 3])


@dataclass
class TrajectoryErrors:
    """Pose errors of an estimated trajectory against a reference, as the literature reports them.

    CamI2V (summed over frames, camera-to-world relative to frame 0, each trajectory's translations divided
    by its own largest norm): ``rot_err`` (radians), ``trans_err``, ``cam_mc``.
    WorldScore (averaged over frames): ``rot_err_deg`` (degrees), ``trans_err_scaled`` (after one optimal
    scale, reference normalised by its largest norm), and ``camera_control`` in [0, 1] (geometric mean of
    ``1 - min(rot, 15 deg) / 15`` and ``1 - min(trans, 0.5) / 0.5``).
    """

    rot_err: float
    trans_err: float
    cam_mc: float
    rot_err_deg: float
    trans_err_scaled: float
    camera_control: float


def _normalize_by_max_norm(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1).max().clamp_min(1e-12)


def optimal_scale(estimated: Tensor, reference: Tensor, iterations: int = 50) -> float:
    """``argmin_c sum_j |reference_j - c * estimated_j|`` for translations ``(T, 3)`` (WorldScore's fit).

    Solved by iteratively reweighted least squares, initialised with the least-squares scale.
    """
    denom = (estimated * estimated).sum()
    if denom < 1e-18:
        return 1.0
    scale = (estimated * reference).sum() / denom
    for _ in range(iterations):
        weights = 1 / (reference - scale * estimated).norm(dim=-1).clamp_min(1e-9)
        scale = (weights * (estimated * reference).sum(-1)).sum() / (weights * (estimated * estimated).sum(-1)).sum()
    return float(scale)


def trajectory_errors(estimated: Tensor, reference: Tensor) -> TrajectoryErrors:
    """CamI2V- and WorldScore-style errors of ``cam_from_world`` trajectories ``(T, 4, 4)``."""
    if estimated.shape != reference.shape:
        raise ValueError(f"trajectories differ in shape: {tuple(estimated.shape)} vs {tuple(reference.shape)}")
    est = invert_pose(relative_to_first(estimated.double()))
    ref = invert_pose(relative_to_first(reference.double()))
    rot = rotation_angle(est[:, :3, :3].transpose(-1, -2) @ ref[:, :3, :3])
    t_est, t_ref = _normalize_by_max_norm(est[:, :3, 3]), _normalize_by_max_norm(ref[:, :3, 3])
    rt_est = torch.cat([est[:, :3, :3], t_est[:, :, None]], dim=-1)
    rt_ref = torch.cat([ref[:, :3, :3], t_ref[:, :, None]], dim=-1)
    scale = optimal_scale(est[:, :3, 3], t_ref)
    trans_scaled = (scale * est[:, :3, 3] - t_ref).norm(dim=-1).mean()
    rot_deg = torch.rad2deg(rot).mean()
    control = math.sqrt(
        max(0.0, 1 - min(float(rot_deg), 15.0) / 15) * max(0.0, 1 - min(float(trans_scaled), 0.5) / 0.5)
    )
    return TrajectoryErrors(
        rot_err=float(rot.sum()),
        trans_err=float((t_est - t_ref).norm(dim=-1).sum()),
        cam_mc=float((rt_est - rt_ref).flatten(-2).norm(dim=-1).sum()),
        rot_err_deg=float(rot_deg),
        trans_err_scaled=float(trans_scaled),
        camera_control=control,
    )


@dataclass
class LyraCameraScore:
    """Lyra's camera reward of an estimated trajectory (:func:`lyra_camera_score`) and its parts."""

    score: float
    rot_err_deg: float  # mean geodesic rotation error over the scored frames
    trans_err: float  # mean L2 error of the centred camera centres after the least-squares scale
    rotation_weight: float  # 0.7, or 0.3 where the commanded rotation stays below 1 degree


def lyra_camera_score(estimated: Tensor, commanded: Tensor, stride: int = 4) -> LyraCameraScore:
    """The camera reward of Lyra's public RL code, on ``cam_from_world`` trajectories ``(T, 4, 4)``.

    Both are taken relative to frame 0 and scored on every ``stride``-th frame (Lyra's estimator sees every
    4th). Rotation: the mean geodesic error ``e_R`` in degrees; translation: the camera centres, each
    trajectory's centred on its mean, the estimate scaled by ``s = |sum(gt . pred)| / sum(pred^2)``, and the
    mean L2 error ``e_t`` (in the commanded trajectory's units). The score is ``w exp(-0.25 e_R) + (1 - w)
    exp(-20 e_t)`` with ``w = 0.7``, or ``0.3`` where the commanded rotation stays below 1 degree (then the
    translation carries the score).
    """
    if estimated.shape != commanded.shape:
        raise ValueError(f"trajectories differ in shape: {tuple(estimated.shape)} vs {tuple(commanded.shape)}")
    est = invert_pose(relative_to_first(estimated.double()))[::stride]  # world (frame 0) from camera
    ref = invert_pose(relative_to_first(commanded.double()))[::stride]
    rot_err = float(torch.rad2deg(rotation_angle(est[:, :3, :3].transpose(-1, -2) @ ref[:, :3, :3])).mean())
    pred, gt = est[:, :3, 3] - est[:, :3, 3].mean(0), ref[:, :3, 3] - ref[:, :3, 3].mean(0)
    denom = float((pred * pred).sum())
    scale = abs(float((gt * pred).sum())) / denom if denom > 1e-18 else 0.0
    trans_err = float((scale * pred - gt).norm(dim=-1).mean())
    commanded_rotation = float(torch.rad2deg(rotation_angle(ref[:, :3, :3])).max())
    weight = 0.3 if commanded_rotation < 1.0 else 0.7
    score = weight * math.exp(-0.25 * rot_err) + (1 - weight) * math.exp(-20 * trans_err)
    return LyraCameraScore(score, rot_err, trans_err, weight)
