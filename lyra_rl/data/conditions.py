"""Conditions for rollouts: a first frame, a prompt and a commanded camera trajectory.

The default source renders procedural scenes (``lyra_rl.data.scenes``), so a run needs no data set: the
condition with global index ``i`` is a pure function of ``(seed, i)``, whatever the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..camera import DIRECTIONS, Cameras, default_intrinsics, trajectory_preset
from .scenes import make_scene, render


@dataclass
class ConditionBatch:
    """Conditions of a batch.

    Attributes:
        images: first frames ``(B, 3, H, W)`` in [0, 1].
        prompts: ``B`` prompts.
        cameras: commanded cameras, ``B`` trajectories of ``T`` frames.
        ids: global condition indices ``(B,)`` (the GRPO group of each rollout).
    """

    images: Tensor
    prompts: list[str]
    cameras: Cameras
    ids: Tensor


def procedural_conditions(seed: int, indices: list[int], num_frames: int, height: int, width: int) -> ConditionBatch:
    """Procedural conditions with global indices ``indices``: scene ``seed * 100003 + i``, preset ``i mod 7``."""
    images, prompts, trajectories = [], [], []
    K = default_intrinsics(height, width)
    for index in indices:
        direction = DIRECTIONS[index % len(DIRECTIONS)]
        scene = make_scene(seed * 100_003 + index)
        trajectory = trajectory_preset(direction, num_frames)
        images.append(render(scene, trajectory[:1], K, height, width).frames[0])
        prompts.append(f"a room with {scene.num_boxes} boxes; the camera moves {direction.replace('_', ' ')}")
        trajectories.append(trajectory)
    cameras = Cameras(torch.stack(trajectories), K.expand(len(indices), num_frames, 3, 3).clone())
    return ConditionBatch(torch.stack(images), prompts, cameras, torch.tensor(indices))
