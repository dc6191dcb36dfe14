"""Per-pixel camera conditioning of the ``dense`` camera layout: Plücker rays and the conditioning frame warped
into each commanded camera by the homography of a fronto-parallel plane.

The plane warp needs no depth: it is exact for pure rotations (any depth) and a first guess for translations
(a plane :data:`PLANE_DEPTH` in front of the first camera). Conventions (OpenCV axes, ``cam_from_world``,
trajectories relative to frame 0, pixel centers at integer ``(u, v)``): docs/conventions.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lyra_rl.camera import invert_pose, relative_to_first

PLANE_DEPTH = 3.0  # depth of the warp's plane in the first camera (scene units; the procedural rooms' scale)
PLUCKER_CHANNELS = 6


def dense_in_channels(latent_channels: int) -> int:
    """DiT input channels of the dense layout: the noisy latents, the conditioning frame's latents, its warp's
    latents and the Plücker rays."""
    return 3 * latent_channels + PLUCKER_CHANNELS


def downscale_intrinsics(intrinsics: Tensor, factor: int) -> Tensor:
    """Intrinsics ``(*, 3, 3)`` of the image whose pixels are ``factor x factor`` blocks of the original's: focal
    lengths ``/ factor``, principal point ``(c + 1/2) / factor - 1/2`` (pixel centers stay at integer ``(u, v)``)."""
    shift = (1 / factor - 1) / 2
    scale = intrinsics.new_tensor([[1 / factor, 0, shift], [0, 1 / factor, shift], [0, 0, 1]])
    return scale @ intrinsics


def _pixel_centers(height: int, width: int, like: Tensor) -> Tensor:
    """Homogeneous pixel centers ``(H * W, 3)``, rows of ``(u, v, 1)`` in row-major order."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=like.dtype, device=like.device),
        torch.arange(width, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)


def plucker_rays(cam_from_world: Tensor, intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Plücker coordinates of the rays through every pixel center, in the world frame.

    Args:
        cam_from_world: extrinsics with shape :math:`(*, 4, 4)`.
        intrinsics: intrinsics of the ``height x width`` image with shape :math:`(*, 3, 3)`.

    Returns:
        ``(*, 6, H, W)``: the unit ray direction ``d`` (channels 0-2) and the moment ``o x d`` (channels 3-5) of the
        ray from the camera center ``o`` through each pixel center.
    """
    world_from_cam = invert_pose(cam_from_world)
    rays = _pixel_centers(height, width, intrinsics) @ torch.linalg.inv(intrinsics).transpose(-1, -2)  # (*, HW, 3)
    directions = F.normalize(rays @ world_from_cam[..., :3, :3].transpose(-1, -2), dim=-1)
    origins = world_from_cam[..., None, :3, 3].expand_as(directions)
    plucker = torch.cat([directions, torch.linalg.cross(origins, directions, dim=-1)], dim=-1)
    return plucker.transpose(-1, -2).unflatten(-1, (height, width))


def plane_homography(cam_from_world: Tensor, intrinsics: Tensor, depth: float = PLANE_DEPTH) -> Tensor:
    """Homographies ``(*, T, 3, 3)`` from the first frame's pixels to each frame's, through the plane ``z = depth``
    of the first camera.

    A point ``X`` of that plane (``n^T X = depth``, ``n = (0, 0, 1)``) is ``X_k = R X + t = (R + t n^T / depth) X``
    in camera ``k`` (``cam_from_world`` relative to frame 0 is ``[R | t]``), so ``x_k ~ K_k (R + t n^T / depth)
    K_0^-1 x_0``. (Textbooks write ``R - t n^T / d`` for the plane ``n^T X + d = 0``: the same plane.)

    Args:
        cam_from_world: a trajectory with shape :math:`(*, T, 4, 4)` (re-expressed relative to its frame 0 here).
        intrinsics: its intrinsics with shape :math:`(*, T, 3, 3)`.
    """
    pose = relative_to_first(cam_from_world)
    normal = pose.new_tensor([0.0, 0.0, 1.0])
    plane = pose[..., :3, :3] + pose[..., :3, 3:] * normal / depth
    return intrinsics @ plane @ torch.linalg.inv(intrinsics[..., :1, :, :])


def warp_first_frame(image: Tensor, cam_from_world: Tensor, intrinsics: Tensor, depth: float = PLANE_DEPTH) -> Tensor:
    """The conditioning frame warped into every camera of its trajectory by :func:`plane_homography` (bilinear;
    pixels that see no part of the first frame are 0).

    Args:
        image: the first frame with shape :math:`(B, 3, H, W)`.
        cam_from_world: the trajectory with shape :math:`(B, T, 4, 4)`.
        intrinsics: its intrinsics with shape :math:`(B, T, 3, 3)`.

    Returns:
        ``(B, T, 3, H, W)``; frame 0 is ``image`` itself (up to interpolation rounding).
    """
    batch, _, height, width = image.shape
    frames = cam_from_world.shape[1]
    first_from_frame = torch.linalg.inv(plane_homography(cam_from_world.double(), intrinsics.double(), depth))
    source = _pixel_centers(height, width, first_from_frame) @ first_from_frame.transpose(-1, -2)  # (B, T, HW, 3)
    in_front = source[..., 2:] > 0  # the pixel's ray meets the plane in front of the first camera
    uv = torch.where(in_front, source[..., :2] / source[..., 2:].clamp_min(1e-12), -2.0 * max(height, width))
    grid = (2 * uv / uv.new_tensor([width - 1, height - 1]) - 1).view(batch * frames, height, width, 2)
    warped = F.grid_sample(image.repeat_interleave(frames, dim=0), grid.to(image.dtype), align_corners=True)
    return warped.unflatten(0, (batch, frames))
