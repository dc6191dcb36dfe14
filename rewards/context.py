"""What the geometric rewards of a set share about one video: correspondences, commanded cameras, guard results.

A :class:`~lyra_rl.reward.RewardSet` hands every reward of the set the same per-video ``cache`` dict; the
geometric rewards keep one :class:`VideoContext` there (under the class itself as key) and build what they
read from it lazily, once per video, for all rewards that agree on the settings it depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .correspondences import CorrespondenceConfig, VideoGeometry
from .two_view import CommandedCameras, moves_as_commanded


@dataclass(frozen=True)
class GuardKey:
    """What a static-guard result depends on: the correspondences, the cameras, the depth bound and the pair."""

    correspondences: CorrespondenceConfig
    min_translation: float
    max_depth_over_path: float
    i: int
    j: int


@dataclass
class VideoContext:
    """The shared, lazily computed geometry of one video.

    Attributes:
        video: ``(T, 3, H, W)`` in ``[0, 1]``.
        cam_from_world: ``(T, 4, 4)`` commanded world-to-camera extrinsics.
        intrinsics: ``(T, 3, 3)`` commanded pixel intrinsics.
        geometries: features, flows and matches per correspondence config.
        commanded: the commanded cameras per ``min_translation`` (what counts as a pure rotation).
        guards: static-guard results (see :func:`~rewards.two_view.moves_as_commanded`).
    """

    video: Tensor
    cam_from_world: Tensor
    intrinsics: Tensor
    geometries: dict[CorrespondenceConfig, VideoGeometry] = field(default_factory=dict)
    commanded: dict[float, CommandedCameras] = field(default_factory=dict)
    guards: dict[GuardKey, bool] = field(default_factory=dict)

    @classmethod
    def of(cls, cache: dict, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor) -> VideoContext:
        """The video's context in a reward set's per-video ``cache``, created by the first reward asking."""
        if cls not in cache:
            cache[cls] = cls(video, cam_from_world, intrinsics)
        return cache[cls]

    def geometry(self, config: CorrespondenceConfig) -> VideoGeometry:
        """The video's correspondences found as ``config`` says (shared whatever the rewards' gaps)."""
        if config not in self.geometries:
            self.geometries[config] = VideoGeometry(self.video, config)
        return self.geometries[config]

    def commanded_cameras(self, min_translation: float) -> CommandedCameras:
        """The commanded cameras, baselines shorter than ``min_translation`` counting as pure rotations."""
        if min_translation not in self.commanded:
            self.commanded[min_translation] = CommandedCameras(self.cam_from_world, self.intrinsics, min_translation)
        return self.commanded[min_translation]

    def moves_as_commanded(
        self, geometry: VideoGeometry, commanded: CommandedCameras, max_depth_over_path: float, i: int, j: int
    ) -> bool:
        """The static-video guard of pair ``(i, j)``, for a scene no deeper than ``max_depth_over_path`` paths."""
        key = GuardKey(geometry.config, commanded.min_translation, max_depth_over_path, i, j)
        if key not in self.guards:
            matches = geometry.matches(i, j)
            max_depth = max_depth_over_path * max(commanded.path_length, 1e-9)
            self.guards[key] = moves_as_commanded(commanded.pair(i, j), matches.points_i, matches.points_j, max_depth)
        return self.guards[key]
