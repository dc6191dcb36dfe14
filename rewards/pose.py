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
    fractions, and trajectory errors of the estimated path (:meth:`estimate_trajectory`: each frame against
    frame 0) as the literature reports them (CamI2V ``rot_err``/``trans_err``/``cam_mc``, WorldScore
    ``camera_control``). Two views fix only the direction of a translation, so the path takes its step
    lengths from the commanded trajectory.
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
        """Adds the trajectory errors of the estimated path (see :meth:`estimate_trajectory`), reusing the poses
        of the scored pairs."""
        known = {frames: result.j_from_i for frames, result in scored.items()}
        estimated = self._trajectory(context, known)
        if estimated is not None:
            errors = trajectory_errors(estimated, context.cam_from_world)
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

        Each frame's pose is estimated from its matches with frame 0 as the reward estimates a pair (with the
        commanded intrinsics ``(T, 3, 3)``): the widest baseline the clip has, and no drift. Where a frame
        shares too few matches with frame 0 (or no pose fits them), its pose is chained on the previous frame's.
        Step lengths come from the commanded ``cam_from_world (T, 4, 4)`` (monocular scale), except where the
        matches do not move as the command implies (the static guard): there the camera does not translate.
        The same path gives the reward's trajectory diagnostics. None if some frame has no estimate either way.
        """
        video, cam_from_world, intrinsics = video.detach().cpu().float(), cam_from_world.cpu(), intrinsics.cpu()
        return self._trajectory(VideoContext(video, cam_from_world, intrinsics), {})

    def _trajectory(self, context: VideoContext, known: dict[tuple[int, ...], np.ndarray]) -> Tensor | None:
        """:meth:`estimate_trajectory` of a video's context; ``known`` holds ``j_from_i`` poses already estimated."""
        geometry, commanded = self.views(context)

        def relative(i: int, j: int) -> np.ndarray | None:
            """``j_from_i (4, 4)`` with the commanded step length (zero where static), None if it has no estimate."""
            if (i, j) in known:
                pose = known[i, j].copy()
            else:
                try:
                    pose = self._estimate_pair(geometry, commanded, i, j).numpy()
                except EstimationError:
                    return None
            moves = self.motion_evidence(context, i, j).moves
            pose[:3, 3] *= np.linalg.norm(commanded.pair(i, j).t) if moves else 0.0
            return pose

        poses = [np.eye(4)]
        for j in range(1, len(context.video)):
            pose = relative(0, j)
            if pose is None:
                step = relative(j - 1, j)
                if step is None:
                    return None
                pose = step @ poses[-1]
            poses.append(pose)
        return torch.from_numpy(np.stack(poses)).float()


@dataclass
class EstimatedPose(PairScore):
    """A pair's score with its estimated relative pose ``j_from_i (4, 4)`` float64 (unit or zero translation)."""

    j_from_i: np.ndarray = field(kw_only=True)
