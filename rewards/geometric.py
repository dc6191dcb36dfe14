"""Bases of the geometric rewards: shared correspondences, and the loop over scored frame pairs.

Contract of :class:`GeometricReward`:
    - A subclass lists the frame tuples it scores (:meth:`~GeometricReward.pairs`: pairs ``(i, j)``, or
      triplets ``(i, j, k)``) and scores one of them (:meth:`~GeometricReward.score_pair`), raising
      :class:`~lyra_rl.reward.EstimationError` on a tuple it cannot score.
    - The base judges every tuple between its first and last frame with the static guard
      (:func:`~rewards.two_view.moves_as_commanded`), then scores it. A tuple that cannot be judged (fewer
      than ``min_matches`` matches between its first and last frame) or scored (the subclass raised on a
      tuple that moves) fails and scores 0; one whose matches do not move as commanded is static and scores
      0, even where no model fits it (a frozen video is judged, not failed). The reward is the mean over
      tuples; with more than ``max_failed_fraction`` of them failed, the video gets the floor and a flag.
      Per-tuple diagnostics, the guard's (``guard_motion_px``, ``guard_parallax_px``) among them, are
      reduced over the tuples that have them as ``reducers`` says (NaN where none has one), next to the
      failed and static fractions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import Tensor

from lyra_rl.reward import EstimationError, VideoReward

from .context import VideoContext
from .correspondences import CorrespondenceConfig, VideoGeometry
from .two_view import CommandedCameras, MotionEvidence


@dataclass(eq=False)
class CorrespondenceReward(VideoReward):
    """Base of the rewards that read the shared correspondences and the commanded cameras of a video.

    Args:
        method: see :class:`~rewards.correspondences.CorrespondenceConfig`; rewards of one set that agree on
            it share the same features, flows and matches (whatever their gaps).
        gaps: frame gaps of the scored pairs ``(i, i + g)``.
        min_translation: commanded baselines shorter than this (trajectory units) count as pure rotations.
        min_matches: pairs with fewer correspondences cannot be judged.
        min_motion_px: the static-video guard's smallest median motion and parallax that show a commanded
            translation, in pixels at 448 px width (scaled with the resolution down to one half; see
            :func:`~rewards.two_view.moves_as_commanded`).
    """

    method: str = "auto"
    gaps: tuple[int, ...] = (1, 4)
    min_translation: float = 1e-4
    min_matches: int = 20
    min_motion_px: float = 0.4

    def __post_init__(self) -> None:
        if not self.gaps or min(self.gaps) < 1:
            raise ValueError(f"gaps must be positive frame gaps, got {self.gaps}")
        self.gaps = tuple(self.gaps)
        self.correspondences = CorrespondenceConfig(method=self.method)

    def views(self, context: VideoContext) -> tuple[VideoGeometry, CommandedCameras]:
        """The video's correspondences and commanded cameras as this reward's settings ask."""
        return context.geometry(self.correspondences), context.commanded_cameras(self.min_translation)

    def motion_evidence(self, context: VideoContext, i: int, j: int) -> MotionEvidence:
        """The static-video guard of pair ``(i, j)``, computed once per video for all rewards that agree.

        Raises:
            EstimationError: fewer than ``min_matches`` matches: the pair cannot be judged.
        """
        geometry, commanded = self.views(context)
        if len(geometry.matches(i, j)) < self.min_matches:
            raise EstimationError(f"fewer than {self.min_matches} matches between frames {i} and {j}")
        return context.motion_evidence(geometry, commanded, self.min_motion_px, i, j)


@dataclass
class PairScore:
    """The score of one scored frame tuple, before the static guard.

    Attributes:
        score: in ``[0, 1]``.
        diagnostics: named per-tuple values, reduced over the scored tuples by the reward's ``reducers``.
        static: set by :class:`GeometricReward`: the matches do not move as commanded (the tuple scores 0).
    """

    score: float
    diagnostics: dict[str, float] = field(default_factory=dict)
    static: bool = False


@dataclass(eq=False)
class GeometricReward(CorrespondenceReward):
    """A reward averaged over frame pairs (or triplets), with failure accounting and the static guard.

    Subclasses implement :meth:`score_pair`, name their per-pair diagnostics in ``reducers`` and may
    override :meth:`pairs` (default: ``(i, i + g)`` for every gap) and :meth:`finish` (video-level terms).

    Args:
        max_failed_fraction: a video whose failed-tuple fraction exceeds this gets the floor and a flag.
        method, gaps, min_translation, min_matches, min_motion_px: see :class:`CorrespondenceReward`.
    """

    unit: ClassVar[str] = "pairs"  # names the failed / static fractions: ``failed_pairs``, ``static_pairs``
    reducers: ClassVar[dict[str, Callable[[list[float]], float]]] = {}

    max_failed_fraction: float = 0.5

    def pairs(self, geometry: VideoGeometry, commanded: CommandedCameras) -> list[tuple[int, ...]]:
        """The frame tuples to score; the static guard checks each between its first and last frame."""
        return geometry.pairs(self.gaps)

    def score_pair(self, geometry: VideoGeometry, commanded: CommandedCameras, frames: tuple[int, ...]) -> PairScore:
        """Scores one frame tuple.

        Raises:
            EstimationError: the tuple cannot be scored (too few matches, no model); it counts as failed.
        """
        raise NotImplementedError

    def finish(
        self,
        context: VideoContext,
        value: float,
        diagnostics: dict[str, float],
        scored: dict[tuple[int, ...], PairScore],
    ) -> tuple[float, dict[str, float]]:
        """Video-level terms on top of the mean over tuples; ``scored`` holds the tuples that did not fail."""
        return value, diagnostics

    def score_video(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image, cache):
        context = VideoContext.of(cache, video, cam_from_world, intrinsics)
        geometry, commanded = self.views(context)
        tuples = self.pairs(geometry, commanded)
        if not tuples:
            return math.nan, {}
        scores, scored, judged, static, errors = [], {}, [], 0, []
        for frames in tuples:
            scores.append(0.0)
            try:
                evidence = self.motion_evidence(context, frames[0], frames[-1])
            except EstimationError as error:
                errors.append(error)
                continue
            judged.append(evidence)
            static += not evidence.moves
            try:
                scored[frames] = result = self.score_pair(geometry, commanded, frames)
            except EstimationError as error:
                if evidence.moves:  # a static tuple is judged whether or not a model fits it (a frozen video)
                    errors.append(error)
                continue
            result.static = not evidence.moves
            scores[-1] = 0.0 if result.static else result.score
        if len(errors) > self.max_failed_fraction * len(tuples):
            raise EstimationError(f"{len(errors)}/{len(tuples)} {self.unit} failed (first: {errors[0]})")
        diagnostics = {}
        for key, reduce in self.reducers.items():
            values = [s.diagnostics[key] for s in scored.values() if key in s.diagnostics]
            diagnostics[key] = float(reduce(values)) if values else math.nan
        for key, values in (
            ("guard_motion_px", [e.motion_px for e in judged]),
            ("guard_parallax_px", [e.parallax_px for e in judged if not math.isnan(e.parallax_px)]),
        ):
            diagnostics[key] = float(np.median(values)) if values else math.nan
        diagnostics[f"failed_{self.unit}"] = len(errors) / len(tuples)
        diagnostics[f"static_{self.unit}"] = static / len(tuples)
        return self.finish(context, float(np.mean(scores)), diagnostics, scored)
