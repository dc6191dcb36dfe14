"""Multi-view feature matching: how much of each frame pair a single rigid two-view geometry explains."""

from __future__ import annotations

import math

import cv2
import numpy as np
from torch import Tensor

from lyra_rl.reward import EstimationError

from .correspondences import GeometricReward
from .two_view import fundamental_inliers, grid_coverage


class FeatureMatchingReward(GeometricReward):
    """RANSAC inlier ratio, inlier count and spatial coverage across frame gaps (VBench-2.0's anchor).

    For each scored pair a fundamental matrix is fitted to the correspondences (USAC, threshold in pixels
    at 448 px width, scaled with the resolution down to one half). The pair scores
    ``inlier_ratio * min(1, inliers / target) * min(1, coverage / min_coverage)`` where ``target`` is
    ``target_inliers`` scaled by the image area and coverage is the share of a 4x4 grid holding inliers.
    Pairs whose matches do not move as commanded score 0 (static guard). The reward is the mean over pairs
    times ``min(1, sharpness / min_sharpness)``, where sharpness is the median gradient energy of the frames
    relative to frame 0 (the conditioning frame): blurring the video away does not pay.

    Range ``[0, 1]``; floor ``0`` (flagged) when more than ``max_failed_fraction`` of the pairs have fewer
    than ``min_matches`` correspondences. It does not read the commanded poses except for the static
    guard, so it is blind to a video that is rigid but follows the wrong trajectory.
    """

    name = "feature_matching"
    floor = 0.0

    def __init__(
        self,
        threshold_px: float = 1.0,
        target_inliers: int = 150,
        min_coverage: float = 0.5,
        min_sharpness: float = 0.6,
        **geometry_kwargs,
    ):
        super().__init__(**geometry_kwargs)
        self.threshold_px = threshold_px
        self.target_inliers = target_inliers
        self.min_coverage = min_coverage
        self.min_sharpness = min_sharpness

    def score_video(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image, cache):
        geometry, commanded = self.geometry(video, cache), self.commanded(cam_from_world, intrinsics, cache)
        target = max(20.0, self.target_inliers * geometry.height * geometry.width / (256 * 448))
        pairs = geometry.pairs(self.gaps)
        scores, ratios, counts, coverages, failed, static = [], [], [], [], 0, 0
        for i, j in pairs:
            matches = geometry.matches(i, j)
            try:
                if len(matches) < self.min_matches:
                    raise EstimationError("too few matches")
                inliers = fundamental_inliers(matches.points_i, matches.points_j, self.threshold_px * geometry.pixel_scale)
            except EstimationError:
                failed += 1
                scores.append(0.0)
                continue
            ratio, count = float(inliers.mean()), int(inliers.sum())
            coverage = grid_coverage(matches.points_i[inliers], geometry.height, geometry.width)
            score = ratio * min(1.0, count / target) * min(1.0, coverage / self.min_coverage)
            if not self.moves_as_commanded(geometry, commanded, i, j, cache):
                static += 1
                score = 0.0
            scores.append(score)
            ratios.append(ratio)
            counts.append(count)
            coverages.append(coverage)
        if failed > self.max_failed_fraction * len(pairs):
            raise EstimationError(f"{failed}/{len(pairs)} pairs with fewer than {self.min_matches} matches")
        sharpness = sharpness_ratio(geometry.gray)
        return float(np.mean(scores)) * min(1.0, sharpness / self.min_sharpness), {
            "sharpness": sharpness,
            "inlier_ratio": float(np.mean(ratios)) if ratios else math.nan,
            "inliers": float(np.mean(counts)) if counts else math.nan,
            "coverage": float(np.mean(coverages)) if coverages else math.nan,
            "failed_pairs": failed / len(pairs),
            "static_pairs": static / len(pairs),
        }


def sharpness_ratio(gray: np.ndarray) -> float:
    """Median over frames of the mean Sobel gradient magnitude relative to frame 0, for ``(T, H, W)`` uint8."""
    energy = []
    for frame in gray.astype(np.float32):
        gx, gy = cv2.Sobel(frame, cv2.CV_32F, 1, 0), cv2.Sobel(frame, cv2.CV_32F, 0, 1)
        energy.append(float(np.sqrt(gx**2 + gy**2).mean()))
    return float(np.median(np.array(energy[1:]) / max(energy[0], 1e-6)))
