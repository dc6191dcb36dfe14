"""Camera-pose consistency: relative poses estimated from the frames vs. the commanded trajectory."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lyra_rl.camera import make_pose, pairwise_pose_errors, trajectory_errors
from lyra_rl.reward import EstimationError

from .correspondences import GeometricReward
from .two_view import CommandedCameras, estimate_relative_pose, rotation_transfer_error


class PoseConsistencyReward(GeometricReward):
    """Agreement of the estimated relative camera poses with the commanded ones.

    For every scored pair ``(i, i + g)``: the relative pose is estimated from the correspondences with the
    commanded intrinsics (5-point essential matrix + ``recoverPose``, USAC), or, where the commanded
    translation is zero, a rotation-only homography. The pair scores
    ``exp(-e_R / tau_rot) * exp(-e_t / tau_trans)`` (tolerances in degrees at 448 px width, widened
    up to 2x for smaller videos) with ``e_R`` the geodesic rotation error and ``e_t`` the
    translation-direction error (degrees). Where the command is a pure rotation, the translation term is
    ``exp(-parallax / tau_parallax_px)`` instead: the median pixel residual of the matches under the
    estimated rotation's homography, which a translating camera leaves. A pair whose matches
    do not move (see ``moves_as_commanded``) scores 0. The reward is the mean over pairs.

    Range ``[0, 1]``; floor ``0`` (flagged) when more than ``max_failed_fraction`` of the pairs have fewer
    than ``min_matches`` correspondences or no pose. Blind to a uniform change of speed along a straight
    translation (monocular scale).

    Diagnostics: median rotation / translation-direction errors over pairs, the failed and static pair
    fractions, and trajectory errors of the chained estimate as the literature reports them (CamI2V
    ``rot_err``/``trans_err``/``cam_mc``, WorldScore ``camera_control``). Two views fix only the direction
    of a translation, so the chained estimate takes its step lengths from the commanded trajectory.
    """

    name = "pose_consistency"
    floor = 0.0

    def __init__(
        self,
        tau_rot_degrees: float = 2.0,
        tau_trans_degrees: float = 20.0,
        threshold_px: float = 1.0,
        tau_parallax_px: float = 1.0,
        **geometry_kwargs,
    ):
        super().__init__(**geometry_kwargs)
        self.tau_rot = tau_rot_degrees
        self.tau_trans = tau_trans_degrees
        self.threshold_px = threshold_px
        self.tau_parallax = tau_parallax_px

    def score_video(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image, cache):
        geometry, commanded = self.geometry(video, cache), self.commanded(cam_from_world, intrinsics, cache)
        threshold = self.threshold_px * geometry.pixel_scale
        # Angular noise grows as the image shrinks (pixel noise over focal length): widen the tolerances.
        tau_rot, tau_trans = self.tau_rot / geometry.pixel_scale, self.tau_trans / geometry.pixel_scale
        scores, rot_errors, trans_errors, parallaxes, failed, static = [], [], [], [], 0, 0
        estimated: dict[tuple[int, int], np.ndarray] = {}
        standing: set[tuple[int, int]] = set()
        pairs = geometry.pairs(self.gaps)
        for i, j in pairs:
            pair, matches = commanded.pair(i, j), geometry.matches(i, j)
            est = self._estimate_pair(geometry, commanded, i, j, threshold)
            if est is None:
                failed += 1
                scores.append(0.0)
                continue
            R = est[:3, :3].numpy()
            ref = make_pose(torch.from_numpy(pair.R), torch.from_numpy(pair.t))
            e_rot, e_trans = (float(e) for e in pairwise_pose_errors(est, ref))
            score = math.exp(-e_rot / tau_rot)
            if pair.translates:
                score *= math.exp(-e_trans / tau_trans)
                trans_errors.append(e_trans)
            else:  # a commanded pure rotation: any parallax left after the estimated rotation is a translation
                residual = rotation_transfer_error(pair, R, matches.points_i, matches.points_j)
                parallaxes.append(float(np.median(residual)))
                score *= math.exp(-parallaxes[-1] / (self.tau_parallax * geometry.pixel_scale))
            if not self.moves_as_commanded(geometry, commanded, i, j, cache):
                static += 1
                standing.add((i, j))
                score = 0.0
            scores.append(score)
            rot_errors.append(e_rot)
            estimated[i, j] = est.numpy()
        if failed > self.max_failed_fraction * len(pairs):
            raise EstimationError(f"{failed}/{len(pairs)} pairs without a pose estimate")
        diagnostics = {
            "rot_err_deg": float(np.median(rot_errors)) if rot_errors else math.nan,
            "trans_dir_err_deg": float(np.median(trans_errors)) if trans_errors else math.nan,
            "rotation_parallax_px": float(np.median(parallaxes)) if parallaxes else math.nan,
            "failed_pairs": failed / len(pairs),
            "static_pairs": static / len(pairs),
        }
        chained = chain_consecutive(estimated, commanded, standing)
        if chained is not None:
            errors = trajectory_errors(chained, cam_from_world)
            diagnostics.update(
                rot_err=errors.rot_err, trans_err=errors.trans_err, cam_mc=errors.cam_mc,
                camera_control=errors.camera_control,
            )
        return float(np.mean(scores)), diagnostics

    def _estimate_pair(self, geometry, commanded: CommandedCameras, i: int, j: int, threshold: float) -> Tensor | None:
        """The estimated ``j_from_i`` pose ``(4, 4)`` float64 (unit or zero translation), None without one."""
        pair, matches = commanded.pair(i, j), geometry.matches(i, j)
        if len(matches) < self.min_matches:
            return None
        try:
            R, t = estimate_relative_pose(pair, matches.points_i, matches.points_j, threshold, rotation_only=not pair.translates)
        except EstimationError:
            return None
        return make_pose(torch.from_numpy(R), torch.from_numpy(np.zeros(3) if t is None else t))

    def estimate_trajectory(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor) -> Tensor | None:
        """The camera path of ``video (T, 3, H, W)`` in [0, 1]: ``(T, 4, 4)`` world-to-camera, frame 0 = identity.

        Consecutive relative poses are estimated as the reward does (with the commanded intrinsics
        ``(T, 3, 3)``) and chained; step lengths come from the commanded ``cam_from_world (T, 4, 4)``
        (monocular scale), except where the matches do not move as the command implies (the static guard):
        there the camera does not translate. The same chain gives the reward's trajectory diagnostics. None if
        any consecutive pair has no estimate.
        """
        cache: dict = {}
        video, cam_from_world, intrinsics = video.detach().cpu().float(), cam_from_world.cpu(), intrinsics.cpu()
        geometry, commanded = self.geometry(video, cache), self.commanded(cam_from_world, intrinsics, cache)
        threshold = self.threshold_px * geometry.pixel_scale
        estimated, standing = {}, set()
        for k in range(len(video) - 1):
            pose = self._estimate_pair(geometry, commanded, k, k + 1, threshold)
            if pose is None:
                return None
            estimated[k, k + 1] = pose.numpy()
            if not self.moves_as_commanded(geometry, commanded, k, k + 1, cache):
                standing.add((k, k + 1))
        return chain_consecutive(estimated, commanded, standing)


def chain_consecutive(
    estimated: dict[tuple[int, int], np.ndarray], commanded: CommandedCameras, standing: set[tuple[int, int]] = frozenset()
) -> Tensor | None:
    """Chains estimated consecutive relative poses into a trajectory ``(T, 4, 4)`` (None if a link is missing).

    Each estimated unit translation is scaled to the commanded step length (unobservable from two views),
    except on the ``standing`` pairs, whose matches do not move as commanded (the static guard): there the
    camera does not translate.
    """
    num_frames = len(commanded.cam_from_world)
    if any((k, k + 1) not in estimated for k in range(num_frames - 1)):
        return None
    poses = [np.eye(4)]
    for k in range(num_frames - 1):
        rel = estimated[k, k + 1].copy()
        rel[:3, 3] *= 0.0 if (k, k + 1) in standing else np.linalg.norm(commanded.pair(k, k + 1).t)
        poses.append(rel @ poses[-1])
    return torch.from_numpy(np.stack(poses)).float()
