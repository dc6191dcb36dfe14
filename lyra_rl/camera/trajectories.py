"""Camera trajectory presets (the seed's seven, MultiCamVideo's basic families around an object, a static camera),
random smooth
trajectories as MultiCamVideo builds them, and :func:`get_trajectory` (a preset or a file).

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
from .poses import axis_angle_to_matrix, invert_pose, make_pose, yaw_matrix

__all__ = [
    "DIRECTIONS",
    "OBJECT_PRESETS",
    "PIVOT_DEPTH",
    "PRESETS",
    "get_trajectory",
    "random_trajectory",
    "trajectory_preset",
]

DIRECTIONS = ("forward", "left", "right", "forward_left", "forward_right", "s_curve", "left_right")
"""The seed's seven presets: the procedural datasets and the fidelity benchmark cycle through these."""

OBJECT_PRESETS = ("orbit_left", "orbit_right", "dolly_in", "dolly_out", "translate_up", "translate_down")
"""The presets that refer to the pivot (an object ``PIVOT_DEPTH`` ahead of the start camera)."""

PRESETS = (*DIRECTIONS, "tilt_up", "tilt_down", *OBJECT_PRESETS, "static")
"""Every preset name :func:`trajectory_preset` (and wherever a direction is accepted) knows."""

PIVOT_DEPTH = 3.0
"""Depth (trajectory units) ahead of the start camera of the point the object presets refer to;
:func:`~lyra_rl.data.scenes.make_scene` with ``pivot_depth`` stands a box there."""


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
        "static": (torch.zeros_like(progress), False),
    }
    if direction not in profiles:
        raise ValueError(
            f"Unknown direction {direction!r}; expected one of {', '.join(PRESETS)} or a trajectory file."
        )
    return profiles[direction]


def _orbit(progress: Tensor, angle: float, pivot_depth: float) -> Tensor:
    """``cam_from_world (T, 4, 4)`` circling the point ``(0, 0, pivot_depth)`` by ``angle`` radians along
    ``progress`` in [0, 1], always looking at it (positive ``angle``: yaw left, so the camera moves to +x)."""
    world_from_cam_rot = yaw_matrix(angle * progress)
    pivot = torch.tensor([0.0, 0.0, pivot_depth], dtype=torch.float64)
    centers = pivot - pivot_depth * world_from_cam_rot[:, :, 2]  # the forward axis points at the pivot
    return invert_pose(make_pose(world_from_cam_rot, centers))


def _looking_at(centers: Tensor, pivot_depth: float) -> Tensor:
    """``cam_from_world (T, 4, 4)`` of cameras at ``centers (T, 3)`` on the plane ``x = 0``, each pitched to look at
    ``(0, 0, pivot_depth)`` (no yaw, no roll)."""
    to_pivot = torch.tensor([0.0, 0.0, pivot_depth], dtype=torch.float64) - centers
    pitch = torch.atan2(-to_pivot[:, 1], to_pivot[:, 2])  # positive: the camera looks up (-y)
    rotation = axis_angle_to_matrix(torch.stack([pitch, torch.zeros_like(pitch), torch.zeros_like(pitch)], -1))
    return invert_pose(make_pose(rotation, centers))


def _object_preset(direction: str, progress: Tensor, angle: float, pivot_depth: float) -> Tensor:
    """The presets of ``OBJECT_PRESETS`` as ``cam_from_world (T, 4, 4)`` float64."""
    if direction.startswith("orbit_"):
        return _orbit(progress, (1.0 if direction == "orbit_right" else -1.0) * angle, pivot_depth)
    centers = torch.zeros(len(progress), 3, dtype=torch.float64)
    if direction.startswith("dolly_"):
        centers[:, 2] = (1.0 if direction == "dolly_in" else -1.0) * pivot_depth / 2 * progress
    else:  # translate_up / translate_down: rise (or sink) by pivot_depth * tan(angle / 2), pitching to the pivot
        centers[:, 1] = (-1.0 if direction == "translate_up" else 1.0) * pivot_depth * math.tan(angle / 2) * progress
    return _looking_at(centers, pivot_depth)


def trajectory_preset(
    direction: str,
    num_frames: int,
    *,
    distance: float = 1.5,
    angle_degrees: float = 40.0,
    pivot_depth: float = PIVOT_DEPTH,
) -> Tensor:
    """A named camera preset (one of ``PRESETS``), as ``cam_from_world`` of shape ``(T, 4, 4)`` (float32).

    The seed's seven move with constant speed along the current heading (``distance`` in total over the clip)
    and yaw as the preset says (``angle_degrees`` in total; positive yaw turns left). The object presets refer
    to the pivot, the point ``pivot_depth`` ahead of the start camera:

    ============== ==============================================================================
    forward        straight along +z, no rotation
    left / right   rotate in place, yaw +angle / -angle
    forward_left   move forward while yawing +angle (an arc to the left)
    forward_right  move forward while yawing -angle (an arc to the right)
    s_curve        move forward; heading swings left to +angle/2 and back (an S-shaped lane change)
    left_right     rotate in place left to +angle/2, then back right to the start
    tilt_up        rotate in place, pitch up by angle (MultiCamVideo's tilt up)
    tilt_down      rotate in place, pitch down by angle
    orbit_left     circle the pivot by angle, moving left (-x) and yawing right to keep it centred (arc left)
    orbit_right    circle the pivot by angle, moving right (+x) and yawing left to keep it centred (arc right)
    dolly_in       straight along +z towards the pivot, halfway to it (``pivot_depth / 2``; zoom in)
    dolly_out      straight along -z away from the pivot by ``pivot_depth / 2`` (zoom out)
    translate_up   rise by ``pivot_depth * tan(angle / 2)``, pitching down to keep the pivot centred
    translate_down sink by as much, pitching up to keep the pivot centred
    static         the camera does not move
    ============== ==============================================================================

    Convention:
        Frame 0 is the identity; the world frame is the first camera (OpenCV axes).
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    progress = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    if direction in OBJECT_PRESETS:
        return _object_preset(direction, progress, math.radians(angle_degrees), pivot_depth).float()
    if direction in ("tilt_up", "tilt_down"):
        pitch = (1.0 if direction == "tilt_up" else -1.0) * math.radians(angle_degrees) * progress
        zeros = torch.zeros_like(pitch)
        return invert_pose(
            make_pose(
                axis_angle_to_matrix(torch.stack([pitch, zeros, zeros], -1)),
                torch.zeros(num_frames, 3, dtype=torch.float64),
            )
        ).float()
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


def random_trajectory(
    num_frames: int, generator: torch.Generator, *, distance: float = 1.5, angle_degrees: float = 40.0
) -> Tensor:
    """A random smooth camera path as MultiCamVideo builds its random ones, as ``cam_from_world (T, 4, 4)``.

    One to three waypoints after the start (each a camera center ahead of the start, up to ``distance`` away,
    and a heading: yaw within ``+-angle_degrees``, pitch within a quarter of it), joined by a polyline that is
    smoothed (a moving average over a fifth of its length), then travelled at constant speed or, with
    probability 1/2, with MultiCamVideo's variable-speed profile ``(1 - exp(-a i / f)) / (1 - exp(-a))``
    (``f = T - 1``, ``a`` in [0.5, 4]: fast first, slowing down).

    Convention:
        Frame 0 is the identity (the start: center 0, heading 0); see :mod:`lyra_rl.camera`.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")

    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    count = int(torch.randint(1, 4, (1,), generator=generator))
    angle = math.radians(angle_degrees)
    centers = torch.stack(
        [
            (uniform(count) - 0.5) * distance,
            (uniform(count) - 0.5) * 0.2 * distance,
            uniform(count).cumsum(0) / count * distance,
        ],
        dim=1,
    )
    headings = torch.stack([(2 * uniform(count) - 1) * angle, (2 * uniform(count) - 1) * angle / 4], dim=1)
    waypoints = torch.cat([torch.zeros(1, 5, dtype=torch.float64), torch.cat([centers, headings], dim=1)])
    dense = torch.nn.functional.interpolate(waypoints.T[None], size=101, mode="linear", align_corners=True)[0]
    window = 21
    padded = torch.cat([dense[:, :1].expand(-1, window // 2), dense, dense[:, -1:].expand(-1, window // 2)], dim=1)
    smooth = padded.unfold(1, window, 1).mean(-1)
    smooth = smooth - smooth[:, :1]  # the start stays the identity
    progress = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    if float(uniform(1)) < 0.5:
        a = 0.5 + 3.5 * float(uniform(1))
        progress = (1 - torch.exp(-a * progress)) / (1 - math.exp(-a))
    position = progress * 100
    low = position.floor().long().clamp(max=99)
    weight = position - low
    path = (smooth[:, low] * (1 - weight) + smooth[:, low + 1] * weight).T  # (T, 5)
    pitch = axis_angle_to_matrix(
        torch.stack([path[:, 4], torch.zeros_like(path[:, 4]), torch.zeros_like(path[:, 4])], -1)
    )
    world_from_cam = make_pose(yaw_matrix(path[:, 3]) @ pitch, path[:, :3])
    return invert_pose(world_from_cam).float()


def get_trajectory(direction_or_path: str, num_frames: int, resample: bool = False, **preset_kwargs: float) -> Tensor:
    """A preset name (see :func:`trajectory_preset`) or a trajectory file (see
    :func:`~lyra_rl.camera.load_trajectory`, which ``resample`` is passed to), as ``cam_from_world`` of shape
    ``(T, 4, 4)``."""
    if direction_or_path in PRESETS:
        return trajectory_preset(direction_or_path, num_frames, **preset_kwargs)
    if Path(direction_or_path).exists():  # a file, or a COLMAP model folder
        return load_trajectory(direction_or_path, num_frames, resample=resample)
    raise ValueError(f"{direction_or_path!r} is neither a direction ({', '.join(PRESETS)}) nor a trajectory file")
