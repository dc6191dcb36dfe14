"""Reprojection consistency: points triangulated with the commanded cameras must land in a third frame."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from lyra_rl.reward import EstimationError

from .correspondences import GeometricReward
from .two_view import project, triangulate


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

    def __init__(
        self,
        tau_px: float = 2.0,
        **geometry_kwargs,
    ):
        super().__init__(**geometry_kwargs)
        self.tau_px = tau_px

    def score_video(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image, cache):
        geometry, commanded = self.geometry(video, cache), self.commanded(cam_from_world, intrinsics, cache)
        tau = self.tau_px * geometry.pixel_scale
        scores, errors, cheiralities, failed, static, triplets = [], [], [], 0, 0, 0
        for g in self.gaps:
            for i in range(geometry.num_frames - 2 * g):
                j, k = i + g, i + 2 * g
                outer = commanded.pair(i, k)
                if not outer.translates:
                    continue
                triplets += 1
                to_j, to_k = geometry.matches(i, j), geometry.matches(i, k)
                _, in_j, in_k = np.intersect1d(to_j.ids_i, to_k.ids_i, return_indices=True)
                if len(in_j) < self.min_matches:
                    failed += 1
                    scores.append(0.0)
                    continue
                points_i, points_j, points_k = to_k.points_i[in_k], to_j.points_j[in_j], to_k.points_j[in_k]
                X = triangulate(outer.P_i, outer.P_j, points_i, points_k)
                _, depth_i = project(outer.P_i, X)
                _, depth_k = project(outer.P_j, X)
                reprojected, _ = project(commanded.P[j], X)
                error = float(np.median(np.linalg.norm(reprojected - points_j, axis=1)))
                cheirality = float(np.mean((depth_i > 0) & (depth_k > 0)))
                score = math.exp(-error / tau) * cheirality
                if not self.moves_as_commanded(geometry, commanded, i, k, cache):
                    static += 1
                    score = 0.0
                scores.append(score)
                errors.append(error)
                cheiralities.append(cheirality)
        if triplets == 0:
            return math.nan, {}
        if failed > self.max_failed_fraction * triplets:
            raise EstimationError(f"{failed}/{triplets} triplets with fewer than {self.min_matches} tracks")
        return float(np.mean(scores)), {
            "reprojection_px": float(np.median(errors)) if errors else math.nan,
            "cheirality": float(np.mean(cheiralities)) if cheiralities else math.nan,
            "failed_triplets": failed / triplets,
            "static_triplets": static / triplets,
        }
