"""Multi-view feature matching: how much of each frame pair a single rigid two-view geometry explains."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lyra_rl.reward import EstimationError

from .correspondences import VideoGeometry
from .geometric import GeometricReward, PairScore
from .two_view import CommandedCameras, fundamental_inliers, grid_coverage


@dataclass(eq=False)
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
    reducers = {"inlier_ratio": np.mean, "inliers": np.mean, "coverage": np.mean}

    threshold_px: float = 1.0
    target_inliers: int = 150
    min_coverage: float = 0.5
    min_sharpness: float = 0.6

    def score_pair(self, geometry: VideoGeometry, commanded: CommandedCameras, frames: tuple[int, ...]) -> PairScore:
        matches = geometry.matches(*frames)
        if len(matches) < self.min_matches:
            raise EstimationError(f"fewer than {self.min_matches} matches")
        inliers = fundamental_inliers(matches.points_i, matches.points_j, self.threshold_px * geometry.pixel_scale)
        ratio, count = float(inliers.mean()), int(inliers.sum())
        coverage = grid_coverage(matches.points_i[inliers], geometry.height, geometry.width)
        target = max(20.0, self.target_inliers * geometry.height * geometry.width / (256 * 448))
        return PairScore(
            ratio * min(1.0, count / target) * min(1.0, coverage / self.min_coverage),
            {"inlier_ratio": ratio, "inliers": count, "coverage": coverage},
        )

    def finish(self, context, value, diagnostics, scored):
        """Blurring the video away does not pay: the mean over pairs times the sharpness factor."""
        sharpness = sharpness_ratio(context.geometry(self.correspondences).gray)
        return value * min(1.0, sharpness / self.min_sharpness), {"sharpness": sharpness, **diagnostics}


def sharpness_ratio(gray: np.ndarray) -> float:
    """Median over frames of the mean Sobel gradient magnitude relative to frame 0, for ``(T, H, W)`` uint8."""
    energy = []
    for frame in gray.astype(np.float32):
        gx, gy = cv2.Sobel(frame, cv2.CV_32F, 1, 0), cv2.Sobel(frame, cv2.CV_32F, 0, 1)
        energy.append(float(np.sqrt(gx**2 + gy**2).mean()))
    return float(np.median(np.array(energy[1:]) / max(energy[0], 1e-6)))
