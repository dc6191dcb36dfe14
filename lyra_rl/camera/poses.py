"""SE(3) poses, rotations, intrinsics and the :class:`Cameras` batch.

Where kornia has the operation, the function here is a thin wrapper over ``kornia.geometry`` that keeps
lyra-rl's name and accepts any number of leading batch dimensions (kornia's pose functions take
``(N, 4, 4)``). ``rotation_angle`` is our own: kornia's geodesic angle (``kornia.metrics``) is in degrees.

Convention:
    See :mod:`lyra_rl.camera` (OpenCV axes, ``cam_from_world`` extrinsics, frame 0 = identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kornia.geometry.conversions import Rt_to_matrix4x4, axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle
from kornia.geometry.epipolar import cross_product_matrix
from kornia.geometry.linalg import compose_transformations, inverse_transformation
from torch import Tensor

from ..errors import IntrinsicsError

__all__ = [
    "Cameras",
    "axis_angle_to_matrix",
    "camera_centers",
    "compose_poses",
    "default_intrinsics",
    "invert_pose",
    "make_pose",
    "matrix_to_axis_angle",
    "pinhole_intrinsics",
    "relative_pose",
    "relative_to_first",
    "resample_trajectory",
    "rotation_angle",
    "skew",
    "trajectory_problem",
    "yaw_matrix",
]


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
    """Cross-product matrices ``[v]_x`` (``[v]_x w = v x w``) of vectors ``(*, 3)``, shape ``(*, 3, 3)``."""
    return cross_product_matrix(v)


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rotation vectors ``(*, 3)`` (axis times angle in radians) to rotation matrices ``(*, 3, 3)``.

    Rodrigues' formula, with a Taylor branch near the identity that keeps the gradient finite there.
    """
    return axis_angle_to_rotation_matrix(axis_angle)


def matrix_to_axis_angle(rotation: Tensor) -> Tensor:
    """Rotation matrices ``(*, 3, 3)`` to rotation vectors ``(*, 3)`` (radians, angle in ``[0, pi]``).

    Goes through the quaternion, so it stays accurate next to ``pi``, where the skew part vanishes.
    """
    return rotation_matrix_to_axis_angle(rotation)


def rotation_angle(rotation: Tensor) -> Tensor:
    """Geodesic angle (radians) of rotation matrices ``(*, 3, 3)``, shape ``(*)``.

    Uses ``atan2(|vee(R - R^T)| / 2, (tr R - 1) / 2)``, accurate near 0 and pi unlike ``arccos``.
    """
    # kornia.metrics.angle_error_mat is this formula but returns degrees; radians are needed here.
    cos = (rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    vee = torch.stack(
        [
            rotation[..., 2, 1] - rotation[..., 1, 2],
            rotation[..., 0, 2] - rotation[..., 2, 0],
            rotation[..., 1, 0] - rotation[..., 0, 1],
        ],
        dim=-1,
    )
    return torch.atan2(vee.norm(dim=-1) / 2, cos)


def yaw_matrix(angle: Tensor | float) -> Tensor:
    """``world_from_cam`` rotation of a camera yawed by ``angle`` radians (positive = left), ``(*, 3, 3)``."""
    angle = torch.as_tensor(angle, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    # Rotation about +y by -angle: the forward axis (0, 0, 1) maps to (-sin, 0, cos).
    return torch.stack([c, zero, -s, zero, one, zero, s, zero, c], dim=-1).reshape(*angle.shape, 3, 3)


def make_pose(rotation: Tensor, translation: Tensor) -> Tensor:
    """Stacks ``R (*, 3, 3)`` and ``t (*, 3)`` into homogeneous ``(*, 4, 4)`` matrices (``R``'s dtype)."""
    batch = rotation.shape[:-2]
    translation = translation.to(rotation).expand(*batch, 3)
    return Rt_to_matrix4x4(rotation.reshape(-1, 3, 3), translation.reshape(-1, 3, 1)).reshape(*batch, 4, 4)


def invert_pose(pose: Tensor) -> Tensor:
    """Inverse of rigid transforms ``(*, 4, 4)`` (``R^T, -R^T t``), exact for SE(3)."""
    return inverse_transformation(pose.reshape(-1, 4, 4)).reshape(pose.shape)


def compose_poses(a_from_b: Tensor, b_from_c: Tensor) -> Tensor:
    """``a_from_c = a_from_b @ b_from_c`` of rigid transforms ``(*, 4, 4)``; leading dimensions broadcast."""
    batch = torch.broadcast_shapes(a_from_b.shape[:-2], b_from_c.shape[:-2])
    flat = [pose.expand(*batch, 4, 4).reshape(-1, 4, 4) for pose in (a_from_b, b_from_c)]
    return compose_transformations(*flat).reshape(*batch, 4, 4)


def camera_centers(cam_from_world: Tensor) -> Tensor:
    """Camera centers in world coordinates ``(*, 3)`` from extrinsics ``(*, 4, 4)``."""
    return invert_pose(cam_from_world)[..., :3, 3]


def relative_to_first(cam_from_world: Tensor) -> Tensor:
    """Re-expresses a trajectory ``(*, T, 4, 4)`` in the frame of its first camera (frame 0 = identity)."""
    return compose_poses(cam_from_world, invert_pose(cam_from_world[..., :1, :, :]))


def relative_pose(cam_from_world_i: Tensor, cam_from_world_j: Tensor) -> Tensor:
    """``j_from_i = T_j T_i^-1``, shape ``(*, 4, 4)``: maps camera-i coordinates to camera-j coordinates."""
    return compose_poses(cam_from_world_j, invert_pose(cam_from_world_i))


def resample_trajectory(cam_from_world: Tensor, times: Tensor) -> Tensor:
    """Evaluates a trajectory ``(T, 4, 4)`` at fractional frame indices ``times (N,)`` in ``[0, T-1]``.

    Rotations are interpolated on the geodesic (slerp), camera centers linearly. Used to retime a
    trajectory (speed changes) and to pool frame cameras to latent frames.

    Returns:
        ``cam_from_world`` of shape :math:`(N, 4, 4)`, in the input's dtype.
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


def default_intrinsics(height: int, width: int, fov_x_degrees: float = 70.0) -> Tensor:
    """Square-pixel pinhole intrinsics ``(3, 3)`` with the principal point at the image center.

    Raises:
        IntrinsicsError: for a field of view outside ``(0, 180)`` degrees (or not finite).
    """
    if not 0 < fov_x_degrees < 180:
        raise IntrinsicsError(f"the field of view must be in (0, 180) degrees, got {fov_x_degrees}")
    focal = (width / 2) / math.tan(math.radians(fov_x_degrees) / 2)
    return pinhole_intrinsics(focal, focal, (width - 1) / 2, (height - 1) / 2)


def pinhole_intrinsics(fx: float, fy: float, cx: float, cy: float) -> Tensor:
    """Pinhole intrinsics ``(3, 3)`` from focal lengths and principal point in pixels.

    Raises:
        IntrinsicsError: for a value that is not finite or a focal length ``<= 0``.
    """
    values = (fx, fy, cx, cy)
    if not all(math.isfinite(v) for v in values) or not (fx > 0 and fy > 0):
        raise IntrinsicsError(f"intrinsics need finite values and focal lengths > 0, got fx fy cx cy = {values}")
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def trajectory_problem(cam_from_world: Tensor, tolerance: float = 1e-3) -> str | None:
    """What keeps ``cam_from_world`` from being a camera path (``None``: nothing): fewer than 2 poses of shape
    ``(4, 4)``, a pose that is not finite, or one whose rotation is not a proper rotation (``|R^T R - I|`` or
    ``|det R - 1|`` above ``tolerance``) or whose last row is not ``0 0 0 1``."""
    if cam_from_world.ndim != 3 or cam_from_world.shape[1:] != (4, 4) or cam_from_world.shape[0] < 2:
        return f"needs at least 2 poses of shape (4, 4), got shape {tuple(cam_from_world.shape)}"
    poses = cam_from_world.double()
    finite = torch.isfinite(poses).flatten(1).all(dim=1)
    if not finite.all():
        return f"pose {int((~finite).nonzero()[0])} is not finite"
    rotation = poses[:, :3, :3]
    orthogonality = (rotation.transpose(-1, -2) @ rotation - torch.eye(3, dtype=poses.dtype)).abs().amax(dim=(1, 2))
    bottom = (poses[:, 3] - poses.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(dim=1)
    error = torch.maximum(torch.maximum(orthogonality, (torch.linalg.det(rotation) - 1).abs()), bottom)
    if (error > tolerance).any():
        k = int((error > tolerance).nonzero()[0])
        return f"pose {k} is not rigid (its rotation or last row is off by {float(error[k]):.3g})"
    return None
