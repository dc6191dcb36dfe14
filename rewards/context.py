"""What the geometric rewards of a set share about one video: correspondences, commanded cameras, guard results.

A :class:`~lyra_rl.reward.RewardSet` hands every reward of the set the same per-video ``cache`` dict; the
geometric rewards keep one :class:`VideoContext` there (under the class itself as key) and build what they
read from it lazily, once per video, for all rewards that agree on the settings it depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .correspondences import CorrespondenceConfig, VideoGeometry
from .two_view import CommandedCameras, MotionEvidence, moves_as_commanded


@dataclass(frozen=True)
class GuardKey:
    """What a static-guard result depends on: the correspondences, the cameras, the guard's settings and the pair."""

    correspondences: CorrespondenceConfig
    min_translation: float
    min_motion_px: float
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
    guards: dict[GuardKey, MotionEvidence] = field(default_factory=dict)

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

    def motion_evidence(
        self, geometry: VideoGeometry, commanded: CommandedCameras, min_motion_px: float, i: int, j: int
    ) -> MotionEvidence:
        """The static-video guard of pair ``(i, j)`` (see :func:`~rewards.two_view.moves_as_commanded`), with
        ``min_motion_px`` given at 448 px width and scaled as the video's pixel tolerances are."""
        key = GuardKey(geometry.config, commanded.min_translation, min_motion_px, i, j)
        if key not in self.guards:
            matches = geometry.matches(i, j)
            self.guards[key] = moves_as_commanded(
                commanded.pair(i, j), matches.points_i, matches.points_j, min_motion_px * geometry.pixel_scale
            )
        return self.guards[key]
