"""Lyra's camera reward: the cameras estimated from the frames against the command, scored as Lyra's RL code does.

The estimator is pluggable (:class:`PoseEstimator`): the default is the project's classical one
(``pose_consistency``'s: each frame's two-view pose against frame 0 from SIFT/flow matches with the commanded
intrinsics, the step lengths taken from the command because two views cannot fix them); a user with a learned
estimator (a VGGT-style camera head, local weights) passes it as ``estimator`` without touching the reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import Tensor

from lyra_rl.camera import lyra_camera_score
from lyra_rl.reward import EstimationError, VideoReward

from .pose import PoseConsistencyReward


@runtime_checkable
class PoseEstimator(Protocol):
    """Estimates the camera path of a video."""

    def estimate_trajectory(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor) -> Tensor | None:
        """The path of ``video (T, 3, H, W)`` in [0, 1] as ``cam_from_world (T, 4, 4)`` (frame 0 = identity, any
        scale), given the commanded ``cam_from_world (T, 4, 4)`` and intrinsics ``(T, 3, 3)``; ``None`` where it
        cannot."""


@dataclass(eq=False)
class LyraCameraReward(VideoReward):
    """``w exp(-0.25 e_R) + (1 - w) exp(-20 e_t)`` of the estimated path against the commanded one
    (:func:`~lyra_rl.camera.lyra_camera_score`: mean geodesic rotation error in degrees, mean L2 error of the
    centred camera centres after a least-squares scale, every ``stride``-th frame relative to frame 0; ``w`` 0.7,
    or 0.3 where the command rotates less than 1 degree).

    Range ``[0, 1]``; floor ``0`` (flagged failed) where the estimator finds no path. With the default classical
    estimator the translation term sees only the directions of the steps (their lengths are the command's), and a
    frozen video is caught by its static guard (no translation); a learned estimator that recovers scale makes
    the term what Lyra measures.

    Diagnostics: ``rot_err_deg``, ``trans_err``, ``rotation_weight``.
    """

    name = "lyra_camera"
    floor = 0.0

    estimator: PoseEstimator = field(default_factory=PoseConsistencyReward)
    stride: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.estimator, PoseEstimator):
            raise TypeError(
                f"estimator must have estimate_trajectory(video, cam_from_world, intrinsics), got {self.estimator!r}"
            )
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    def estimate_trajectory(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor) -> Tensor | None:
        """The estimator's path (so ``lyra-rl evaluate`` can draw and measure it)."""
        return self.estimator.estimate_trajectory(video, cam_from_world, intrinsics)

    def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
        estimated = self.estimate_trajectory(video, cam_from_world, intrinsics)
        if estimated is None:
            raise EstimationError("the estimator found no camera path")
        result = lyra_camera_score(estimated, cam_from_world, self.stride)
        diagnostics = {"rot_err_deg": result.rot_err_deg, "trans_err": result.trans_err}
        return result.score, {**diagnostics, "rotation_weight": result.rotation_weight}
