"""Trajectory file formats: lyra-rl JSON, OpenGL/Blender poses, MultiCamVideo and RealEstate10K.

Every converter returns OpenCV ``cam_from_world`` relative to its first frame.

Convention:
    See :mod:`lyra_rl.camera`; conversion from other conventions happens here and only here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from kornia.geometry.conversions import camtoworld_graphics_to_vision_4x4
from torch import Tensor

from ..errors import TrajectoryError
from .colmap import read_colmap_model
from .poses import invert_pose, relative_to_first, resample_trajectory, trajectory_problem

__all__ = ["from_multicam_extrinsics", "from_realestate10k", "load_trajectory", "opengl_to_opencv"]


def opengl_to_opencv(world_from_cam_gl: Tensor) -> Tensor:
    """OpenGL/Blender camera-to-world ``(*, 4, 4)`` (x right, y up, z back) to OpenCV ``cam_from_world``."""
    world_from_cam = camtoworld_graphics_to_vision_4x4(world_from_cam_gl.reshape(-1, 4, 4))
    return invert_pose(world_from_cam).reshape(world_from_cam_gl.shape)


def _parse_bracket_matrix(text: str) -> list[list[float]]:
    rows = [row.strip("[] ") for row in text.strip().split("] [")]
    return [[float(x) for x in row.split()] for row in rows]


def from_multicam_extrinsics(data: dict, camera: str, frames: list[int] | None = None) -> Tensor:
    """MultiCamVideo / ReCamMaster ``camera_extrinsics.json`` to ``cam_from_world`` ``(T, 4, 4)``.

    The file stores, per ``frameN`` and ``camNN``, a row-vector Unreal camera-to-world matrix in
    centimetres (``"[r r r 0] [r r r 0] [r r r 0] [tx ty tz 1]"``). It is converted exactly as
    ReCamMaster's loader does (transpose; camera axes (right, -up, forward); cm to m), then made relative
    to the first returned frame.
    """
    keys = frames if frames is not None else sorted(int(k.removeprefix("frame")) for k in data)
    mats = torch.tensor([_parse_bracket_matrix(data[f"frame{k}"][camera]) for k in keys], dtype=torch.float64)
    world_from_cam = mats.transpose(-1, -2)[:, :, [1, 2, 0, 3]]
    world_from_cam[:, :3, 1] *= -1
    world_from_cam[:, :3, 3] /= 100
    # Unreal's world is left-handed, so each camera basis above is a reflection (still orthogonal, so
    # invert_pose is exact); relative poses are proper rotations.
    return relative_to_first(invert_pose(world_from_cam)).float()


def from_realestate10k(lines: list[str], height: int, width: int) -> tuple[Tensor, Tensor]:
    """RealEstate10K / CameraCtrl pose lines to ``cam_from_world (T, 4, 4)`` and intrinsics ``(T, 3, 3)``.

    Each line is ``timestamp fx fy cx cy k1 k2 r11 r12 r13 t1 r21 ... t3`` with intrinsics normalised by
    the image size and a world-to-camera 3x4 matrix; the first line may be a URL and is skipped.
    """
    rows = [[float(x) for x in line.split()] for line in lines if line.strip() and not line.startswith("http")]
    if not rows or any(len(r) != 19 for r in rows):
        raise ValueError("RealEstate10K pose lines must have 19 numbers each")
    values = torch.tensor(rows, dtype=torch.float64)
    fx, fy, cx, cy = values[:, 1] * width, values[:, 2] * height, values[:, 3] * width, values[:, 4] * height
    intrinsics = torch.zeros(len(rows), 3, 3, dtype=torch.float64)
    intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2] = fx, fy, cx, cy
    intrinsics[:, 2, 2] = 1
    cam_from_world = torch.eye(4, dtype=torch.float64).repeat(len(rows), 1, 1)
    cam_from_world[:, :3, :] = values[:, 7:].reshape(-1, 3, 4)
    return relative_to_first(cam_from_world).float(), intrinsics.float()


def load_trajectory(
    path: str | Path, num_frames: int | None = None, camera: str = "cam01", resample: bool = False
) -> Tensor:
    """Loads a custom trajectory file as ``cam_from_world (T, 4, 4)`` relative to its first frame.

    Formats, by content:
        - lyra-rl JSON: ``{"cam_from_world": [[4x4], ...]}`` (OpenCV world-to-camera), or
          ``{"world_from_cam_opengl": [[4x4], ...]}`` (OpenGL/Blender camera-to-world);
        - MultiCamVideo ``camera_extrinsics.json`` (``{"frame0": {"cam01": "[...] [...]"}}``; ``camera``
          picks the camera);
        - RealEstate10K / CameraCtrl ``.txt`` pose lines;
        - a COLMAP / GLOMAP sparse model folder (:mod:`lyra_rl.camera.colmap`), its images in name order.

    ``num_frames``, if given, is the frame count the trajectory must have; with ``resample`` a trajectory of
    another length is resampled to it (rotations slerped, centers interpolated) instead.

    Raises:
        TrajectoryError: for fewer than 2 poses, a pose that is not finite or not rigid
            (:func:`~lyra_rl.camera.trajectory_problem`), or another length than ``num_frames`` without
            ``resample``; the message names the file.
        ValueError: for a file of no known format.
    """
    path = Path(path)
    if path.is_dir():
        trajectory = read_colmap_model(path).cam_from_world.double()
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
        if "cam_from_world" in data:
            trajectory = torch.tensor(data["cam_from_world"], dtype=torch.float64)
        elif "world_from_cam_opengl" in data:
            trajectory = opengl_to_opencv(torch.tensor(data["world_from_cam_opengl"], dtype=torch.float64))
        elif "frame0" in data:
            trajectory = from_multicam_extrinsics(data, camera)
        else:
            raise ValueError(
                f"{path}: unknown trajectory JSON; expected 'cam_from_world', 'world_from_cam_opengl' or 'frameN' keys"
            )
    else:
        trajectory, _ = from_realestate10k(path.read_text().splitlines(), height=1, width=1)
    problem = trajectory_problem(trajectory)
    if problem:
        raise TrajectoryError(f"trajectory {path} {problem}")
    trajectory = relative_to_first(trajectory.double()).float()
    if num_frames is not None and num_frames != trajectory.shape[0]:
        if not resample:
            raise TrajectoryError(
                f"trajectory {path} has {trajectory.shape[0]} poses for {num_frames} frames and resampling was not "
                "asked for (--resample, resample=True)"
            )
        times = torch.linspace(0, trajectory.shape[0] - 1, num_frames)
        trajectory = resample_trajectory(trajectory, times)
    return trajectory
