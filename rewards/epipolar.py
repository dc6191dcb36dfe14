"""Epipolar consistency: matches checked against the fundamental matrix of the *commanded* cameras."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from lyra_rl.reward import EstimationError

from .correspondences import GeometricReward
from .two_view import fundamental_from_pose, grid_coverage, rotation_transfer_error, sampson_distance


class EpipolarReward(GeometricReward):
    """Robust Sampson distance of the matches under the commanded fundamental matrix.

    For each scored pair the distance of every correspondence to the epipolar geometry
    ``F = K_j^-T [t]_x R K_i^-1`` of the commanded relative pose is measured in pixels (Sampson, first
    order); where the commanded translation is zero, the transfer error of the rotation homography
    ``K_j R K_i^-1`` is used instead. The pair scores ``exp(-median / tau)`` with ``tau`` in pixels at
    448 px width (scaled with the resolution down to one half), times a coverage factor ``min(1, coverage / min_coverage)``
    (a 4x4 grid). Translating pairs whose matches do not move score 0 (static guard). The reward is the
    mean over pairs.

    Range ``[0, 1]``; floor ``0`` (flagged) when more than ``max_failed_fraction`` of the pairs have fewer
    than ``min_matches`` correspondences. Blind to temporal order and speed along a straight translation
    (every forward motion has the same epipolar lines): :class:`ReprojectionReward` covers those.
    """

    name = "epipolar"
    floor = 0.0

    def __init__(
        self,
        tau_px: float = 1.0,
        min_coverage: float = 0.5,
        **geometry_kwargs,
    ):
        super().__init__(**geometry_kwargs)
        self.tau_px = tau_px
        self.min_coverage = min_coverage

    def score_video(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image, cache):
        geometry, commanded = self.geometry(video, cache), self.commanded(cam_from_world, intrinsics, cache)
        tau = self.tau_px * geometry.pixel_scale
        pairs = geometry.pairs(self.gaps)
        scores, medians, consistent, failed, static = [], [], [], 0, 0
        for i, j in pairs:
            matches = geometry.matches(i, j)
            if len(matches) < self.min_matches:
                failed += 1
                scores.append(0.0)
                continue
            pair = commanded.pair(i, j)
            if pair.translates:
                distances = sampson_distance(fundamental_from_pose(pair), matches.points_i, matches.points_j)
            else:
                distances = rotation_transfer_error(pair, pair.R, matches.points_i, matches.points_j)
            median = float(np.median(distances))
            coverage = grid_coverage(matches.points_i, geometry.height, geometry.width)
            score = math.exp(-median / tau) * min(1.0, coverage / self.min_coverage)
            if not self.moves_as_commanded(geometry, commanded, i, j, cache):
                static += 1
                score = 0.0
            scores.append(score)
            medians.append(median)
            consistent.append(float(np.mean(distances < 2 * tau)))
        if failed > self.max_failed_fraction * len(pairs):
            raise EstimationError(f"{failed}/{len(pairs)} pairs with fewer than {self.min_matches} matches")
        return float(np.mean(scores)), {
            "sampson_px": float(np.median(medians)) if medians else math.nan,
            "consistent_fraction": float(np.mean(consistent)) if consistent else math.nan,
            "failed_pairs": failed / len(pairs),
            "static_pairs": static / len(pairs),
        }
