"""Cameras: SE(3) poses, intrinsics, trajectory presets, converters and pose-error metrics.

Convention (the only one in lyra-rl; other conventions are converted at the edges):
    - OpenCV camera axes: x right, y down, z forward.
    - Extrinsics are ``cam_from_world`` 4x4 matrices, ``X_cam = R @ X_world + t``.
    - Intrinsics ``K`` are 3x3 in pixels; the center of the top-left pixel is ``(u, v) = (0, 0)``.
    - Trajectories are relative to their first frame: ``cam_from_world[0]`` is the identity, so the
      world frame is the camera of frame 0.
    - Yaw is a rotation about the camera's y axis; *positive yaw turns the camera left* (the forward
      axis swings towards -x), as in the seed's ``left`` preset.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

DIRECTIONS = ("forward", "left", "right", "forward_left", "forward_right", "s_curve", "left_right")


@dataclass
class Cameras:
    """A batch of camera trajectories.

    Attributes:
        cam_from_world: world-to-camera extrinsics with shape :math:`(B, T, 4, 4)`.
        intrinsics: pixel intrinsics with shape :math:`(B, T, 3, 3)`.
    """

    cam_from_world: Tensor
    intrinsics: Tensor

    def __post_init__(self) -> None:
        if self.cam_from_world.ndim != 4 or self.cam_from_world.shape[-2:] != (4, 4):
            raise ValueError(f"cam_from_world must have shape (B, T, 4, 4), got {tuple(self.cam_from_world.shape)}")
        expected = (*self.cam_from_world.shape[:2], 3, 3)
        if tuple(self.intrinsics.shape) != expected:
            raise ValueError(f"intrinsics must have shape {expected}, got {tuple(self.intrinsics.shape)}")
        if not (torch.isfinite(self.cam_from_world).all() and torch.isfinite(self.intrinsics).all()):
            raise ValueError("cameras contain NaN or infinite values")

    @classmethod
    def from_trajectory(cls, cam_from_world: Tensor, intrinsics: Tensor, batch_size: int = 1) -> Cameras:
        """Builds a batch from one trajectory ``(T, 4, 4)`` and one ``(3, 3)`` or ``(T, 3, 3)`` intrinsics."""
        num_frames = cam_from_world.shape[0]
        intrinsics = intrinsics.expand(num_frames, 3, 3) if intrinsics.ndim == 2 else intrinsics
        return cls(
            cam_from_world.unsqueeze(0).expand(batch_size, -1, -1, -1).clone(),
            intrinsics.unsqueeze(0).expand(batch_size, -1, -1, -1).clone(),
        )

    @property
    def batch_size(self) -> int:
        return self.cam_from_world.shape[0]

    @property
    def num_frames(self) -> int:
        return self.cam_from_world.shape[1]

    def __getitem__(self, index: int | slice) -> Cameras:
        """A sub-batch; an integer index keeps the batch dimension."""
        index = slice(index, index + 1 or None) if isinstance(index, int) else index
        return Cameras(self.cam_from_world[index], self.intrinsics[index])

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.cam_from_world.to(device), self.intrinsics.to(device))


def skew(v: Tensor) -> Tensor:
    """Cross-product matrices ``[v]_x`` of vectors ``(*, 3)``, shape ``(*, 3, 3)``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)


def _vee(rotation: Tensor) -> Tensor:
    """``(R - R^T)`` as a vector ``(*, 3)``: twice ``sin(angle)`` times the rotation axis."""
    return torch.stack(
        [rotation[..., 2, 1] - rotation[..., 1, 2], rotation[..., 0, 2] - rotation[..., 2, 0],
         rotation[..., 1, 0] - rotation[..., 0, 1]], dim=-1,
    )


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula: rotation vectors ``(*, 3)`` (radians) to rotation matrices ``(*, 3, 3)``."""
    angle = axis_angle.norm(dim=-1, keepdim=True).unsqueeze(-1)
    k = skew(axis_angle) / angle.clamp_min(1e-12)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + torch.sin(angle) * k + (1 - torch.cos(angle)) * (k @ k)


def matrix_to_axis_angle(rotation: Tensor) -> Tensor:
    """Rotation matrices ``(*, 3, 3)`` to rotation vectors ``(*, 3)`` (radians, angle in ``[0, pi]``)."""
    angle = rotation_angle(rotation)
    vee = _vee(rotation)
    near_pi = angle > math.pi - 1e-3
    # Away from pi the skew part gives the axis; near pi, the largest column of the symmetric part
    # (R + R^T) / 2 - cos(angle) I = (1 - cos(angle)) k k^T.
    axis = vee / vee.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if near_pi.any():
        eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
        sym = (rotation + rotation.transpose(-1, -2)) / 2 - torch.cos(angle)[..., None, None] * eye
        col = sym.norm(dim=-2).argmax(dim=-1)
        axis_pi = torch.gather(sym, -1, col[..., None, None].expand(*col.shape, 3, 1)).squeeze(-1)
        axis_pi = axis_pi / axis_pi.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # k k^T fixes the axis up to sign; the skew part, though small, still carries it.
        axis_pi = axis_pi * torch.where((axis_pi * vee).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(axis_pi)
        axis = torch.where(near_pi[..., None], axis_pi, axis)
    return axis * angle[..., None]


def rotation_angle(rotation: Tensor) -> Tensor:
    """Geodesic angle (radians) of rotation matrices ``(*, 3, 3)``, shape ``(*)``.

    Uses ``atan2(|vee(R - R^T)| / 2, (tr R - 1) / 2)``, accurate near 0 and pi unlike ``arccos``.
    """
    cos = (rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    sin = _vee(rotation).norm(dim=-1) / 2
    return torch.atan2(sin, cos)


def yaw_matrix(angle: Tensor | float) -> Tensor:
    """``world_from_cam`` rotation of a camera yawed by ``angle`` radians (positive = left), ``(*, 3, 3)``."""
    angle = torch.as_tensor(angle, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    # Rotation about +y by -angle: the forward axis (0, 0, 1) maps to (-sin, 0, cos).
    return torch.stack([c, zero, -s, zero, one, zero, s, zero, c], dim=-1).reshape(*angle.shape, 3, 3)


def make_pose(rotation: Tensor, translation: Tensor) -> Tensor:
    """Stacks ``R (*, 3, 3)`` and ``t (*, 3)`` into homogeneous ``(*, 4, 4)`` matrices."""
    pose = torch.zeros(*rotation.shape[:-2], 4, 4, dtype=rotation.dtype, device=rotation.device)
    pose[..., :3, :3] = rotation
    pose[..., :3, 3] = translation
    pose[..., 3, 3] = 1
    return pose


def invert_pose(pose: Tensor) -> Tensor:
    """Inverse of rigid transforms ``(*, 4, 4)`` (``R^T, -R^T t``), exact for SE(3)."""
    rotation_t = pose[..., :3, :3].transpose(-1, -2)
    return make_pose(rotation_t, -(rotation_t @ pose[..., :3, 3:4]).squeeze(-1))


def camera_centers(cam_from_world: Tensor) -> Tensor:
    """Camera centers in world coordinates ``(*, 3)`` from extrinsics ``(*, 4, 4)``."""
    return invert_pose(cam_from_world)[..., :3, 3]


def relative_to_first(cam_from_world: Tensor) -> Tensor:
    """Re-expresses a trajectory ``(*, T, 4, 4)`` in the frame of its first camera (frame 0 = identity)."""
    return cam_from_world @ invert_pose(cam_from_world[..., :1, :, :])


def relative_pose(cam_from_world_i: Tensor, cam_from_world_j: Tensor) -> Tensor:
    """``j_from_i = T_j T_i^-1``, shape ``(*, 4, 4)``: maps camera-i coordinates to camera-j coordinates."""
    return cam_from_world_j @ invert_pose(cam_from_world_i)


def default_intrinsics(height: int, width: int, fov_x_degrees: float = 70.0) -> Tensor:
    """Square-pixel pinhole intrinsics ``(3, 3)`` with the principal point at the image center."""
    focal = (width / 2) / math.tan(math.radians(fov_x_degrees) / 2)
    return torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


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


def resample_trajectory(cam_from_world: Tensor, times: Tensor) -> Tensor:
    """Evaluates a trajectory ``(T, 4, 4)`` at fractional frame indices ``times (N,)`` in ``[0, T-1]``.

    Rotations are interpolated on the geodesic (slerp), camera centers linearly. Used to retime a
    trajectory (speed changes) and to pool frame cameras to latent frames.
    """
    num_frames = cam_from_world.shape[0]
    if times.min() < 0 or times.max() > num_frames - 1:
        raise ValueError(f"times must lie in [0, {num_frames - 1}], got [{times.min()}, {times.max()}]")
    pose = invert_pose(cam_from_world.double())
    times = times.double()
    lo = times.floor().long().clamp(max=num_frames - 2)
    frac = (times - lo)[:, None]
    rot_lo, rot_hi = pose[lo, :3, :3], pose[lo + 1, :3, :3]
    delta = matrix_to_axis_angle(rot_lo.transpose(-1, -2) @ rot_hi)
    rotation = rot_lo @ axis_angle_to_matrix(delta * frac)
    center = (1 - frac) * pose[lo, :3, 3] + frac * pose[lo + 1, :3, 3]
    return invert_pose(make_pose(rotation, center)).to(cam_from_world.dtype)


def opengl_to_opencv(world_from_cam_gl: Tensor) -> Tensor:
    """OpenGL/Blender camera-to-world ``(*, 4, 4)`` (x right, y up, z back) to OpenCV ``cam_from_world``."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=world_from_cam_gl.dtype, device=world_from_cam_gl.device))
    return invert_pose(world_from_cam_gl @ flip)


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


def load_trajectory(path: str | Path, num_frames: int | None = None, camera: str = "cam01") -> Tensor:
    """Loads a custom trajectory file as ``cam_from_world (T, 4, 4)`` relative to its first frame.

    Formats, by content:
        - lyra-rl JSON: ``{"cam_from_world": [[4x4], ...]}`` (OpenCV world-to-camera), or
          ``{"world_from_cam_opengl": [[4x4], ...]}`` (OpenGL/Blender camera-to-world);
        - MultiCamVideo ``camera_extrinsics.json`` (``{"frame0": {"cam01": "[...] [...]"}}``; ``camera``
          picks the camera);
        - RealEstate10K / CameraCtrl ``.txt`` pose lines.

    If ``num_frames`` is given and differs from the file's length, the trajectory is resampled to it.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if "cam_from_world" in data:
            trajectory = relative_to_first(torch.tensor(data["cam_from_world"], dtype=torch.float64)).float()
        elif "world_from_cam_opengl" in data:
            gl = torch.tensor(data["world_from_cam_opengl"], dtype=torch.float64)
            trajectory = relative_to_first(opengl_to_opencv(gl)).float()
        elif "frame0" in data:
            trajectory = from_multicam_extrinsics(data, camera)
        else:
            raise ValueError(f"{path}: unknown trajectory JSON; expected 'cam_from_world', 'world_from_cam_opengl' or 'frameN' keys")
    else:
        trajectory, _ = from_realestate10k(text.splitlines(), height=1, width=1)
    if num_frames is not None and num_frames != trajectory.shape[0]:
        times = torch.linspace(0, trajectory.shape[0] - 1, num_frames)
        trajectory = resample_trajectory(trajectory, times)
    return trajectory


def get_trajectory(direction_or_path: str, num_frames: int, **preset_kwargs: float) -> Tensor:
    """A preset name (see :func:`trajectory_preset`) or a trajectory file, as ``(T, 4, 4)``."""
    if direction_or_path in DIRECTIONS:
        return trajectory_preset(direction_or_path, num_frames, **preset_kwargs)
    if Path(direction_or_path).is_file():
        return load_trajectory(direction_or_path, num_frames)
    raise ValueError(f"{direction_or_path!r} is neither a direction ({', '.join(DIRECTIONS)}) nor a trajectory file")


def translation_direction_error(estimated: Tensor, reference: Tensor) -> Tensor:
    """Angle (degrees) between translation vectors ``(*, 3)``; NaN where either is zero."""
    cos = (estimated * reference).sum(-1) / (estimated.norm(dim=-1) * reference.norm(dim=-1))
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def pairwise_pose_errors(estimated: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair errors of relative poses ``j_from_i`` ``(*, 4, 4)``.

    Returns:
        Rotation error ``angle(R_est^T R_ref)`` in degrees ``(*)`` and translation-direction error in
        degrees ``(*)`` (NaN where the reference translation is zero: direction is undefined).
    """
    rot = torch.rad2deg(rotation_angle(estimated[..., :3, :3].transpose(-1, -2) @ reference[..., :3, :3]))
    return rot, translation_direction_error(estimated[..., :3, 3], reference[..., :3, 3])


@dataclass
class TrajectoryErrors:
    """Pose errors of an estimated trajectory against a reference, as the literature reports them.

    CamI2V (summed over frames, camera-to-world relative to frame 0, each trajectory's translations divided
    by its own largest norm): ``rot_err`` (radians), ``trans_err``, ``cam_mc``.
    WorldScore (averaged over frames): ``rot_err_deg`` (degrees), ``trans_err_scaled`` (after one optimal
    scale, reference normalised by its largest norm), and ``camera_control`` in [0, 1] (geometric mean of
    ``1 - min(rot, 15 deg) / 15`` and ``1 - min(trans, 0.5) / 0.5``).
    """

    rot_err: float
    trans_err: float
    cam_mc: float
    rot_err_deg: float
    trans_err_scaled: float
    camera_control: float


def _normalize_by_max_norm(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1).max().clamp_min(1e-12)


def optimal_scale(estimated: Tensor, reference: Tensor, iterations: int = 50) -> float:
    """``argmin_c sum_j |reference_j - c * estimated_j|`` for translations ``(T, 3)`` (WorldScore's fit).

    Solved by iteratively reweighted least squares, initialised with the least-squares scale.
    """
    denom = (estimated * estimated).sum()
    if denom < 1e-18:
        return 1.0
    scale = (estimated * reference).sum() / denom
    for _ in range(iterations):
        weights = 1 / (reference - scale * estimated).norm(dim=-1).clamp_min(1e-9)
        scale = (weights * (estimated * reference).sum(-1)).sum() / (weights * (estimated * estimated).sum(-1)).sum()
    return float(scale)


def trajectory_errors(estimated: Tensor, reference: Tensor) -> TrajectoryErrors:
    """CamI2V- and WorldScore-style errors of ``cam_from_world`` trajectories ``(T, 4, 4)``."""
    if estimated.shape != reference.shape:
        raise ValueError(f"trajectories differ in shape: {tuple(estimated.shape)} vs {tuple(reference.shape)}")
    est = invert_pose(relative_to_first(estimated.double()))
    ref = invert_pose(relative_to_first(reference.double()))
    rot = rotation_angle(est[:, :3, :3].transpose(-1, -2) @ ref[:, :3, :3])
    t_est, t_ref = _normalize_by_max_norm(est[:, :3, 3]), _normalize_by_max_norm(ref[:, :3, 3])
    rt_est = torch.cat([est[:, :3, :3], t_est[:, :, None]], dim=-1)
    rt_ref = torch.cat([ref[:, :3, :3], t_ref[:, :, None]], dim=-1)
    scale = optimal_scale(est[:, :3, 3], t_ref)
    trans_scaled = (scale * est[:, :3, 3] - t_ref).norm(dim=-1).mean()
    rot_deg = torch.rad2deg(rot).mean()
    control = math.sqrt(max(0.0, 1 - min(float(rot_deg), 15.0) / 15) * max(0.0, 1 - min(float(trans_scaled), 0.5) / 0.5))
    return TrajectoryErrors(
        rot_err=float(rot.sum()),
        trans_err=float((t_est - t_ref).norm(dim=-1).sum()),
        cam_mc=float((rt_est - rt_ref).flatten(-2).norm(dim=-1).sum()),
        rot_err_deg=float(rot_deg),
        trans_err_scaled=float(trans_scaled),
        camera_control=control,
    )
