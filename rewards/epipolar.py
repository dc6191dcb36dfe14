"""Epipolar consistency: matches checked against the fundamental matrix of the *commanded* cameras."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lyra_rl.reward import EstimationError

from .correspondences import VideoGeometry
from .geometric import GeometricReward, PairScore
from .two_view import CommandedCameras, fundamental_from_pose, grid_coverage, rotation_transfer_error, sampson_distance


@dataclass(eq=False)
class EpipolarReward(GeometricReward):
    """Robust Sampson distance of the matches under the commanded fundamental matrix.

    For each scored pair the distance of every correspondence to the epipolar geometry
    ``F = K_j^-T [t]_x R K_i^-1`` of the commanded relative pose is measured in pixels (Sampson, first
    order); where the commanded translation is zero, the transfer error of the rotation homography
    ``K_j R K_i^-1`` is used instead. The pair scores ``exp(-median / tau)`` with ``tau`` in pixels at
    448 px width (scaled with the resolution down to one half), times a coverage factor
    ``min(1, coverage / min_coverage)`` (a 4x4 grid). Translating pairs whose matches do not move score 0
    (static guard). The reward is the mean over pairs.

    Range ``[0, 1]``; floor ``0`` (flagged) when more than ``max_failed_fraction`` of the pairs have fewer
    than ``min_matches`` correspondences. Blind to temporal order and speed along a straight translation
    (every forward motion has the same epipolar lines): :class:`ReprojectionReward` covers those.
    """

    name = "epipolar"
    floor = 0.0

    tau_px: float = 1.0
    min_coverage: float = 0.5

    reducers = {"sampson_px": np.median, "consistent_fraction": np.mean}

    def score_pair(self, geometry: VideoGeometry, commanded: CommandedCameras, frames: tuple[int, ...]) -> PairScore:
        i, j = frames
        matches = geometry.matches(i, j)
        if len(matches) < self.min_matches:
            raise EstimationError(f"fewer than {self.min_matches} matches")
        pair = commanded.pair(i, j)
        if pair.translates:
            distances = sampson_distance(fundamental_from_pose(pair), matches.points_i, matches.points_j)
        else:
            distances = rotation_transfer_error(pair, pair.R, matches.points_i, matches.points_j)
        tau = self.tau_px * geometry.pixel_scale
        median = float(np.median(distances))
        coverage = grid_coverage(matches.points_i, geometry.height, geometry.width)
        return PairScore(
            math.exp(-median / tau) * min(1.0, coverage / self.min_coverage),
            {"sampson_px": median, "consistent_fraction": float(np.mean(distances < 2 * tau))},
        )
