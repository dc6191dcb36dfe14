"""Broken (3D-inconsistent) variants of videos, for testing and benchmarking 3D-consistency rewards.

Each function maps a video to a corrupted copy that simulates one failure mode of video world models.
Variants that follow a wrong camera trajectory (wrong path, wrong speed) are not here: render the scene
along that other trajectory instead.

Convention:
    - Videos are ``(T, 3, H, W)`` float tensors in ``[0, 1]``; outputs have the input's shape, dtype and
      range.
    - Frame 0 is the conditioning frame; variants that keep it say so.
    - Random variants take an explicit ``torch.Generator`` (CPU) and use no global random state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "blur",
    "crossfade",
    "freeze_frames",
    "random_displacement_fields",
    "shuffle_frames",
    "warp_nonrigid",
]


def _check_video(frames: Tensor, name: str = "frames") -> None:
    """Raises ``ValueError`` unless ``frames`` is a floating ``(T, 3, H, W)`` tensor with ``T >= 1``."""
    if not isinstance(frames, Tensor) or frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{name} must be a (T, 3, H, W) tensor, got {getattr(frames, 'shape', type(frames))}")
    if not frames.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1], got {frames.dtype}")


def _frame_progress(num_frames: int, frames: Tensor) -> Tensor:
    """``k / (T - 1)`` for each frame ``k`` (all zeros when ``T = 1``), shape ``(T,)``."""
    return torch.arange(num_frames, dtype=frames.dtype, device=frames.device) / max(num_frames - 1, 1)


def shuffle_frames(frames: Tensor, generator: torch.Generator) -> Tensor:
    """Temporally permutes the frames after frame 0.

    Simulates a video whose content does not follow the camera path in order (temporal incoherence): every
    frame is a valid view of the scene, but the camera jumps back and forth.

    Args:
        frames: video of shape :math:`(T, 3, H, W)` with ``T >= 3``.
        generator: CPU generator drawing the permutation.

    Returns:
        The permuted video, shape :math:`(T, 3, H, W)`; frame 0 stays in place and the permutation is never
        the identity (a random identity draw is replaced by a cyclic shift of frames ``1..T-1``).
    """
    _check_video(frames)
    num_frames = frames.shape[0]
    if num_frames < 3:
        raise ValueError(f"shuffle_frames needs at least 3 frames to permute frames 1..T-1, got {num_frames}")
    tail = torch.randperm(num_frames - 1, generator=generator) + 1
    if torch.equal(tail, torch.arange(1, num_frames)):
        tail = tail.roll(1)
    order = torch.cat([torch.zeros(1, dtype=torch.long), tail]).to(frames.device)
    return frames[order]


def freeze_frames(frames: Tensor) -> Tensor:
    """Repeats frame 0 over the whole clip.

    Simulates a model that ignores the camera command (no motion at all).

    Args:
        frames: video of shape :math:`(T, 3, H, W)`.

    Returns:
        The frozen video, shape :math:`(T, 3, H, W)`, every frame equal to frame 0.
    """
    _check_video(frames)
    return frames[:1].expand_as(frames).clone()


def random_displacement_fields(
    num_frames: int,
    height: int,
    width: int,
    strength_px: float,
    generator: torch.Generator,
    grid_size: int = 4,
) -> Tensor:
    """Smooth random 2D displacement fields whose amplitude grows linearly over the clip.

    Each frame gets an independent random ``grid_size x grid_size`` grid of 2D vectors, upsampled
    bicubically to the image size and scaled so that its largest displacement norm is exactly
    ``strength_px * k / (T - 1)`` pixels for frame ``k``.

    Args:
        num_frames: number of frames ``T``.
        height: image height ``H``.
        width: image width ``W``.
        strength_px: largest displacement of the last frame, in pixels.
        generator: CPU generator drawing the coarse grids.
        grid_size: resolution of the coarse random grids (lower is smoother).

    Returns:
        Displacements ``(dx, dy)`` in pixels, shape :math:`(T, H, W, 2)`; frame 0 is all zeros.
    """
    if strength_px < 0 or not math.isfinite(strength_px):
        raise ValueError(f"strength_px must be finite and non-negative, got {strength_px}")
    coarse = 2 * torch.rand(num_frames, 2, grid_size, grid_size, generator=generator) - 1
    fields = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    peak = fields.norm(dim=1).flatten(1).amax(1).clamp(min=1e-12)
    amplitude = strength_px * torch.arange(num_frames) / max(num_frames - 1, 1)
    return (fields * (amplitude / peak)[:, None, None, None]).permute(0, 2, 3, 1)


def warp_nonrigid(
    frames: Tensor,
    strength_px: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Warps each frame by its own smooth random displacement field ("morphing").

    Simulates non-rigid deformation of the scene: local image content moves in a way no camera motion
    through a static 3D scene can explain, increasingly over the clip. See
    :func:`random_displacement_fields` for the fields; output pixel ``p`` of frame ``k`` takes the input
    color at ``p + d_k(p)`` (bilinear, border padding).

    Args:
        frames: video of shape :math:`(T, 3, H, W)`.
        strength_px: largest displacement at the last frame, in pixels; defaults to 4% of the width.
        generator: CPU generator drawing the fields; required.

    Returns:
        The warped video, shape :math:`(T, 3, H, W)`; frame 0 is unchanged.
    """
    _check_video(frames)
    if generator is None:
        raise ValueError("warp_nonrigid needs an explicit torch.Generator")
    num_frames, _, height, width = frames.shape
    strength = 0.04 * width if strength_px is None else strength_px
    displacement = random_displacement_fields(num_frames, height, width, strength, generator)
    displacement = displacement.to(device=frames.device, dtype=frames.dtype)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=frames.dtype, device=frames.device),
        torch.arange(width, dtype=frames.dtype, device=frames.device),
        indexing="ij",
    )
    # Pixel-center coordinates to grid_sample's [-1, 1] with align_corners=False.
    x = (2 * (cols + displacement[..., 0]) + 1) / width - 1
    y = (2 * (rows + displacement[..., 1]) + 1) / height - 1
    grid = torch.stack([x, y], dim=-1)
    warped = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
    warped[0] = frames[0]
    return warped.clamp(0, 1)


def crossfade(frames: Tensor, other: Tensor) -> Tensor:
    """Alpha-blends the video into another one, ``alpha = k / (T - 1)`` for frame ``k``.

    Simulates a scene that dissolves into a different scene (content not anchored in one 3D world).

    Args:
        frames: video of shape :math:`(T, 3, H, W)`.
        other: video of the same shape that the clip fades into.

    Returns:
        ``(1 - alpha) frames + alpha other``, shape :math:`(T, 3, H, W)`; frame 0 equals ``frames[0]``
        and the last frame equals ``other[-1]``.
    """
    _check_video(frames)
    _check_video(other, "other")
    if other.shape != frames.shape:
        raise ValueError(f"other must have the shape of frames {tuple(frames.shape)}, got {tuple(other.shape)}")
    alpha = _frame_progress(frames.shape[0], frames)[:, None, None, None]
    return torch.lerp(frames, other.to(frames), alpha)


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1D Gaussian of standard deviation ``sigma``, radius ``ceil(3 sigma)``, shape ``(2r + 1,)``."""
    radius = max(math.ceil(3 * sigma), 1)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur(frames: Tensor, sigma_px: float | None = None) -> Tensor:
    """Heavy Gaussian blur of every frame but frame 0.

    Simulates a model that loses the scene's detail after the conditioning frame (no texture left to
    anchor the geometry): the blurred frames no longer match frame 0 locally.

    Args:
        frames: video of shape :math:`(T, 3, H, W)`.
        sigma_px: standard deviation of the Gaussian in pixels; defaults to 3% of the width.

    Returns:
        The blurred video, shape :math:`(T, 3, H, W)` (separable filter, reflected borders); frame 0 is
        unchanged.
    """
    _check_video(frames)
    num_frames, channels, height, width = frames.shape
    sigma = 0.03 * width if sigma_px is None else sigma_px
    if sigma <= 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma_px must be finite and positive, got {sigma}")
    kernel = _gaussian_kernel(sigma, frames.dtype, frames.device)
    radius = kernel.numel() // 2
    if radius >= min(height, width):
        raise ValueError(f"sigma_px={sigma} is too large for {height}x{width} frames (reflection padding)")
    blurred = frames[1:].reshape(-1, 1, height, width)
    blurred = F.conv2d(F.pad(blurred, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    blurred = blurred.reshape(num_frames - 1, channels, height, width)
    return torch.cat([frames[:1], blurred]).clamp(0, 1)
