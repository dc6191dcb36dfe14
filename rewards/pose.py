"""Camera-pose consistency: relative poses estimated from the frames vs. the commanded trajectory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lyra_rl.camera import make_pose, pairwise_pose_errors, trajectory_errors
from lyra_rl.reward import EstimationError

from .context import VideoContext
from .correspondences import VideoGeometry
from .geometric import GeometricReward, PairScore
from .two_view import CommandedCameras, estimate_relative_pose, rotation_transfer_error


@dataclass(eq=False)
class PoseConsistencyReward(GeometricReward):
    """Agreement of the estimated relative camera poses with the commanded ones.

    For every scored pair ``(i, i + g)``: the relative pose is estimated from the correspondences with the
    commanded intrinsics (5-point essential matrix + ``recoverPose``, USAC), or, where the commanded
    translation is zero, a rotation-only homography. The pair scores
    ``exp(-e_R / tau_rot) * exp(-e_t / tau_trans)`` (tolerances in degrees at 448 px width, widened
    up to 2x for smaller videos) with ``e_R`` the geodesic rotation error and ``e_t`` the
    translation-direction error (degrees). Where the command is a pure rotation, the translation term is
    ``exp(-parallax / tau_parallax_px)`` instead: the median pixel residual of the matches under the
    estimated rotation's homography, which a translating camera leaves. A pair whose matches do not move
    as commanded (the static guard, see ``moves_as_commanded``) scores 0. The reward is the mean over pairs.

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

    tau_rot_degrees: float = 2.0
    tau_trans_degrees: float = 20.0
    threshold_px: float = 1.0
    tau_parallax_px: float = 1.0

    reducers = {"rot_err_deg": np.median, "trans_dir_err_deg": np.median, "rotation_parallax_px": np.median}

    def score_pair(self, geometry: VideoGeometry, commanded: CommandedCameras, frames: tuple[int, ...]) -> PairScore:
        i, j = frames
        pair, matches = commanded.pair(i, j), geometry.matches(i, j)
        estimated = self._estimate_pair(geometry, commanded, i, j)
        ref = make_pose(torch.from_numpy(pair.R), torch.from_numpy(pair.t))
        e_rot, e_trans = (float(e) for e in pairwise_pose_errors(estimated, ref))
        # Angular noise grows as the image shrinks (pixel noise over focal length): widen the tolerances.
        score = math.exp(-e_rot / (self.tau_rot_degrees / geometry.pixel_scale))
        result = EstimatedPose(score, {"rot_err_deg": e_rot}, j_from_i=estimated.numpy())
        if pair.translates:
            result.score *= math.exp(-e_trans / (self.tau_trans_degrees / geometry.pixel_scale))
            result.diagnostics["trans_dir_err_deg"] = e_trans
        else:  # a commanded pure rotation: any parallax left after the estimated rotation is a translation
            residual = rotation_transfer_error(pair, estimated[:3, :3].numpy(), matches.points_i, matches.points_j)
            parallax = float(np.median(residual))
            result.score *= math.exp(-parallax / (self.tau_parallax_px * geometry.pixel_scale))
            result.diagnostics["rotation_parallax_px"] = parallax
        return result

    def finish(self, context, value, diagnostics, scored):
        """Adds the trajectory errors of the chained estimate (see :func:`chain_consecutive`)."""
        _, commanded = self.views(context)
        standing = {frames for frames, result in scored.items() if result.static}
        estimated = {frames: result.j_from_i for frames, result in scored.items()}
        chained = chain_consecutive(estimated, commanded, standing)
        if chained is not None:
            errors = trajectory_errors(chained, context.cam_from_world)
            diagnostics.update(
                rot_err=errors.rot_err,
                trans_err=errors.trans_err,
                cam_mc=errors.cam_mc,
                camera_control=errors.camera_control,
            )
        return value, diagnostics

    def _estimate_pair(self, geometry: VideoGeometry, commanded: CommandedCameras, i: int, j: int) -> Tensor:
        """The estimated ``j_from_i`` pose ``(4, 4)`` float64 (unit or zero translation).

        Raises:
            EstimationError: too few matches, or no pose could be fitted.
        """
        pair, matches = commanded.pair(i, j), geometry.matches(i, j)
        if len(matches) < self.min_matches:
            raise EstimationError(f"fewer than {self.min_matches} matches")
        threshold = self.threshold_px * geometry.pixel_scale
        rotation_only = not pair.translates
        R, t = estimate_relative_pose(pair, matches.points_i, matches.points_j, threshold, rotation_only=rotation_only)
        return make_pose(torch.from_numpy(R), torch.from_numpy(np.zeros(3) if t is None else t))

    def estimate_trajectory(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor) -> Tensor | None:
        """The camera path of ``video (T, 3, H, W)`` in [0, 1]: ``(T, 4, 4)`` world-to-camera, frame 0 = identity.

        Consecutive relative poses are estimated as the reward does (with the commanded intrinsics
        ``(T, 3, 3)``) and chained; step lengths come from the commanded ``cam_from_world (T, 4, 4)``
        (monocular scale), except where the matches do not move as the command implies (the static guard):
        there the camera does not translate. The same chain gives the reward's trajectory diagnostics. None if
        any consecutive pair has no estimate.
        """
        video, cam_from_world, intrinsics = video.detach().cpu().float(), cam_from_world.cpu(), intrinsics.cpu()
        context = VideoContext(video, cam_from_world, intrinsics)
        geometry, commanded = self.views(context)
        estimated, standing = {}, set()
        for k in range(len(video) - 1):
            try:
                estimated[k, k + 1] = self._estimate_pair(geometry, commanded, k, k + 1).numpy()
            except EstimationError:
                return None
            if not self.motion_evidence(context, k, k + 1).moves:
                standing.add((k, k + 1))
        return chain_consecutive(estimated, commanded, standing)


@dataclass
class EstimatedPose(PairScore):
    """A pair's score with its estimated relative pose ``j_from_i (4, 4)`` float64 (unit or zero translation)."""

    j_from_i: np.ndarray = field(kw_only=True)


def chain_consecutive(
    estimated: dict[tuple[int, int], np.ndarray],
    commanded: CommandedCameras,
    standing: set[tuple[int, int]] = frozenset(),
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
