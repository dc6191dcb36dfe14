"""Point-cloud agreement: geometry triangulated from two disjoint parts of the video must coincide."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
from torch import Tensor

from lyra_rl.camera import camera_centers
from lyra_rl.reward import EstimationError

from .context import VideoContext
from .geometric import CorrespondenceReward
from .two_view import project, triangulate


@dataclass(eq=False)
class PointCloudReward(CorrespondenceReward):
    """Chamfer agreement of the point clouds triangulated from the first and second half of the video.

    In each half, the matches of every scored pair with a commanded baseline that moves as commanded (the
    static guard, :func:`~rewards.two_view.moves_as_commanded`) are triangulated with the commanded cameras
    (points kept if in front of both cameras and within ``max_depth_factor`` times the median depth). Each
    cloud is cleaned by open3d's statistical outlier removal; the agreement is ``exp(-d / tau)`` with ``d``
    the median nearest-neighbour distance between the clouds (both ways) divided by the median point depth
    (scale-free). The reward is the agreement times the fraction of the judged pairs that move as commanded,
    and 0 when a half has none: a frozen video triangulates to the same (wrong) cloud in both halves. A rigid
    scene seen along the commanded path gives one cloud; morphing, wrong trajectories and cross-fades give
    two.

    Range ``[0, 1]``; NaN (not applicable) when a half has no commanded baseline (pure rotation); floor
    ``0`` (flagged) when a half yields fewer than ``min_points`` points from pairs that move (pairs with fewer
    than ``min_matches`` matches cannot be judged and give none). With ``export_dir`` set, each scored
    video's two clouds are written as PLY files for inspection.
    """

    name = "point_cloud"
    floor = 0.0

    tau: float = 0.05
    min_points: int = 50
    max_depth_factor: float = 5.0
    export_dir: str | Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.export_dir = Path(self.export_dir) if self.export_dir else None
        self._exported = 0

    def _half_cloud(self, context: VideoContext, frames: range) -> tuple[np.ndarray, int, int] | None:
        """World points ``(N, 3)`` triangulated in one half, with the numbers of its translating pairs that
        move as commanded and that are static; None if no pair there has a commanded baseline."""
        geometry, commanded = self.views(context)
        points, depths, translating, moving, static = [np.zeros((0, 3))], [np.zeros(0)], False, 0, 0
        for i, j in geometry.pairs(self.gaps):
            if i not in frames or j not in frames:
                continue
            pair = commanded.pair(i, j)
            if not pair.translates:
                continue
            translating = True
            try:
                evidence = self.motion_evidence(context, i, j)
            except EstimationError:  # too few matches to judge: no points from this pair
                continue
            if not evidence.moves:
                static += 1
                continue
            moving += 1
            matches = geometry.matches(i, j)
            X = triangulate(pair.P_i, pair.P_j, matches.points_i, matches.points_j)
            _, depth_i = project(pair.P_i, X)
            _, depth_j = project(pair.P_j, X)
            front = (depth_i > 0) & (depth_j > 0)
            points.append(X[front, :3])
            depths.append(depth_i[front])
        if not translating:
            return None
        points, depths = np.concatenate(points), np.concatenate(depths)
        near = points[depths < self.max_depth_factor * np.median(depths)] if len(depths) else points
        return near, moving, static

    def score_video(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image, cache):
        context = VideoContext.of(cache, video, cam_from_world, intrinsics)
        half = len(video) // 2
        halves = [self._half_cloud(context, frames) for frames in (range(0, half), range(half, len(video)))]
        if any(h is None for h in halves):
            return math.nan, {}
        clouds, moving, static = zip(*halves)
        if any(m == 0 and s > 0 for m, s in zip(moving, static)):  # a half does not move as commanded
            return 0.0, {"static_pairs": sum(static) / (sum(moving) + sum(static))}
        _, commanded = self.views(context)
        cameras = (commanded.P[:half], commanded.P[half:])
        cleaned = []
        for points, other in zip(clouds, reversed(cameras)):
            points = points[seen_by_any(other, points, video.shape[-2], video.shape[-1])]
            if len(points) < self.min_points:
                raise EstimationError(f"only {len(points)} points of one half of the video seen by the other half")
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
            cloud, _ = cloud.remove_statistical_outlier(nb_neighbors=20, std_ratio=2.0)
            cleaned.append(cloud)
        a, b = cleaned
        distances = np.concatenate(
            [np.asarray(a.compute_point_cloud_distance(b)), np.asarray(b.compute_point_cloud_distance(a))]
        )
        points = np.concatenate([np.asarray(a.points), np.asarray(b.points)])
        origin = camera_centers(cam_from_world[0].double()).numpy()
        scale = float(np.median(np.linalg.norm(points - origin, axis=1)))
        relative = float(np.median(distances)) / max(scale, 1e-9)
        if self.export_dir is not None:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            for part, cloud in zip("ab", cleaned):
                o3d.io.write_point_cloud(
                    str(self.export_dir / f"cloud_{os.getpid()}_{self._exported:04d}_{part}.ply"), cloud
                )
            self._exported += 1
        moving_fraction = sum(moving) / (sum(moving) + sum(static))
        return math.exp(-relative / self.tau) * moving_fraction, {
            "chamfer_relative": relative,
            "points_first_half": float(len(a.points)),
            "points_second_half": float(len(b.points)),
            "static_pairs": 1 - moving_fraction,
        }


def seen_by_any(P: np.ndarray, points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Which world points ``(N, 3)`` project in front of and inside the image of at least one of the cameras
    ``P (C, 3, 4)``, ``(N,)`` bool."""
    x = np.einsum("cij,nj->cni", P, np.concatenate([points, np.ones((len(points), 1))], axis=1))
    depth = x[..., 2]
    u, v = x[..., 0] / np.where(depth > 0, depth, 1), x[..., 1] / np.where(depth > 0, depth, 1)
    inside = (depth > 0) & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
    return inside.any(axis=0)
