"""The seed's seven camera trajectory presets, and :func:`get_trajectory` (a preset or a file).

Convention:
    See :mod:`lyra_rl.camera` (OpenCV axes, ``cam_from_world`` extrinsics, frame 0 = identity,
    positive yaw turns left).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .converters import load_trajectory
from .poses import invert_pose, make_pose, yaw_matrix

__all__ = ["DIRECTIONS", "get_trajectory", "trajectory_preset"]

DIRECTIONS = ("forward", "left", "right", "forward_left", "forward_right", "s_curve", "left_right")


def _heading_profile(direction: str, progress: Tensor, angle: float) -> tuple[Tensor, bool]:
    """Yaw (radians, positive = left) along ``progress`` in [0, 1], and whether the camera moves forward."""
    bump = angle / 2 * (1 - torch.cos(2 * math.pi * progress)) / 2  # 0 -> angle/2 at the middle -> 0
    profiles = {
        "forward": (torch.zeros_like(progress), True),
        "left": (angle * progress, False),
        "right": (-angle * progress, False),
        "forward_left": (angle * progress, True),
        "forward_right": (-angle * progress, True),
        "s_curve": (bump, True),
        "left_right": (bump, False),
    }
    if direction not in profiles:
        raise ValueError(f"Unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS)} or a trajectory file.")
    return profiles[direction]


def trajectory_preset(
    direction: str, num_frames: int, *, distance: float = 1.5, angle_degrees: float = 40.0
) -> Tensor:
    """One of the seed's seven camera presets, as ``cam_from_world`` of shape ``(T, 4, 4)`` (float32).

    The camera moves with constant speed along its current heading (``distance`` in total over the clip)
    and yaws as the preset says (``angle_degrees`` in total; positive yaw turns left):

    ============== ==============================================================================
    forward        straight along +z, no rotation
    left / right   rotate in place, yaw +angle / -angle
    forward_left   move forward while yawing +angle (an arc to the left)
    forward_right  move forward while yawing -angle (an arc to the right)
    s_curve        move forward; heading swings left to +angle/2 and back (an S-shaped lane change)
    left_right     rotate in place left to +angle/2, then back right to the start
    ============== ==============================================================================

    Convention:
        Frame 0 is the identity; the world frame is the first camera (OpenCV axes).
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    progress = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    yaw, moves = _heading_profile(direction, progress, math.radians(angle_degrees))
    world_from_cam_rot = yaw_matrix(yaw)
    step = distance / (num_frames - 1) if moves else 0.0
    centers = torch.zeros(num_frames, 3, dtype=torch.float64)
    for k in range(1, num_frames):
        # Midpoint heading between frames keeps arcs symmetric and independent of the frame count.
        mid_heading = yaw_matrix((yaw[k - 1] + yaw[k]) / 2)[:, 2]
        centers[k] = centers[k - 1] + step * mid_heading
    world_from_cam = make_pose(world_from_cam_rot, centers)
    return invert_pose(world_from_cam).float()


def get_trajectory(direction_or_path: str, num_frames: int, **preset_kwargs: float) -> Tensor:
    """A preset name (see :func:`trajectory_preset`) or a trajectory file (see
    :func:`~lyra_rl.camera.load_trajectory`), as ``cam_from_world`` of shape ``(T, 4, 4)``."""
    if direction_or_path in DIRECTIONS:
        return trajectory_preset(direction_or_path, num_frames, **preset_kwargs)
    if Path(direction_or_path).is_file():
        return load_trajectory(direction_or_path, num_frames)
    raise ValueError(f"{direction_or_path!r} is neither a direction ({', '.join(DIRECTIONS)}) nor a trajectory file")
