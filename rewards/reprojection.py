"""Reprojection consistency: points triangulated with the commanded cameras must land in a third frame."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lyra_rl.reward import EstimationError

from .correspondences import VideoGeometry
from .geometric import GeometricReward, PairScore
from .two_view import CommandedCameras, project, triangulate


@dataclass(eq=False)
class ReprojectionReward(GeometricReward):
    """Three-view check of the commanded cameras, including speed and scale along the path.

    For each triplet ``(i, i + g, i + 2g)`` (``g`` in ``gaps``), tracks are joined from the matches of
    ``(i, i + g)`` and ``(i, i + 2g)``; each track is triangulated with the commanded cameras of frames
    ``i`` and ``i + 2g`` and reprojected into frame ``i + g``. The triplet scores
    ``exp(-median reprojection error / tau) * cheirality`` (``tau`` in pixels at 448 px width, scaled with
    the resolution; cheirality = fraction of points in front of both cameras). A translating outer pair
    whose matches do not move scores 0. Two-view epipolar checks cannot see the ratio of baselines along
    a straight path; the third view does, so this reward catches wrong speed profiles and shuffled frames
    on forward motion.

    Range ``[0, 1]``; NaN (not applicable) when no triplet has a commanded baseline (pure rotation);
    floor ``0`` (flagged) when more than ``max_failed_fraction`` of the triplets have fewer than
    ``min_matches`` tracks.
    """

    name = "reprojection"
    floor = 0.0

    tau_px: float = 2.0

    unit = "triplets"
    reducers = {"reprojection_px": np.median, "cheirality": np.mean}

    def pairs(self, geometry: VideoGeometry, commanded: CommandedCameras) -> list[tuple[int, ...]]:
        """Triplets ``(i, i + g, i + 2g)`` whose outer pair has a commanded baseline, by gap then by i."""
        triplets = [(i, i + g, i + 2 * g) for g in self.gaps for i in range(geometry.num_frames - 2 * g)]
        return [(i, j, k) for i, j, k in triplets if commanded.pair(i, k).translates]

    def score_pair(self, geometry: VideoGeometry, commanded: CommandedCameras, frames: tuple[int, ...]) -> PairScore:
        i, j, k = frames
        to_j, to_k = geometry.matches(i, j), geometry.matches(i, k)
        _, in_j, in_k = np.intersect1d(to_j.ids_i, to_k.ids_i, return_indices=True)
        if len(in_j) < self.min_matches:
            raise EstimationError(f"fewer than {self.min_matches} tracks")
        outer = commanded.pair(i, k)
        points_i, points_j, points_k = to_k.points_i[in_k], to_j.points_j[in_j], to_k.points_j[in_k]
        X = triangulate(outer.P_i, outer.P_j, points_i, points_k)
        _, depth_i = project(outer.P_i, X)
        _, depth_k = project(outer.P_j, X)
        reprojected, _ = project(commanded.P[j], X)
        error = float(np.median(np.linalg.norm(reprojected - points_j, axis=1)))
        cheirality = float(np.mean((depth_i > 0) & (depth_k > 0)))
        return PairScore(
            math.exp(-error / (self.tau_px * geometry.pixel_scale)) * cheirality,
            {"reprojection_px": error, "cheirality": cheirality},
        )
