"""Video codecs of :class:`~policies.wan_camera.WanCameraPolicy` and the video sizes each can code.

Two codecs map videos to the DiT's latents: Wan's ``AutoencoderKLWan`` (4x in time, 8x in space, learned) and
the lossless :class:`SpaceToDepthCodec` of the small embedded world model (no temporal compression, ``f x f``
pixel blocks stacked into channels). Video and latent layouts: see docs/conventions.md ("Videos").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

WAN_VAE_STRIDES = (4, 8)  # Wan's VAE: (temporal, spatial) compression


def check_wan_vae_video_size(num_frames: int, height: int, width: int) -> None:
    """The sizes Wan generates: ``4k + 1`` frames (``k >= 1``) and sides divisible by 16 (8x VAE, 2x2 patches);
    else a ``ValueError`` naming the size that does not fit."""
    if (num_frames - 1) % 4 or num_frames < 5:
        raise ValueError(f"num_frames must be 4k+1 with k >= 1 (the VAE compresses time 4x), got {num_frames}")
    if height % 16 or width % 16:
        raise ValueError(f"height and width must be multiples of 16 (8x VAE, 2x2 patches), got {height}x{width}")


class SpaceToDepthCodec(nn.Module):
    """Lossless space-to-depth codec: frames ``(3, H, W)`` in ``[0, 1]`` <-> latents ``(3 f^2, H/f, W/f)`` in
    ``[-1, 1]`` (``2 x - 1``: about zero mean and unit scale), every video frame one latent frame.

    Channel ``c * f^2 + i * f + j`` of a latent pixel ``(y, x)`` is color ``c`` of pixel ``(f y + i, f x + j)``
    (``torch.nn.functional.pixel_unshuffle``). The rearrangement is exact, and so is the affine map's round trip
    for values on the ``2^-24`` grid (``torch.rand``'s); other float32 values come back within ``2^-25``.
    No weights: it has nothing to load or train.

    Args:
        factor: the side ``f`` of the pixel blocks.
    """

    temporal_stride = 1

    def __init__(self, factor: int = 4):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor

    @property
    def spatial_stride(self) -> int:
        return self.factor

    @property
    def latent_channels(self) -> int:
        return 3 * self.factor**2

    def check_video_size(self, num_frames: int, height: int, width: int, patch: int = 2) -> None:
        """Sizes it codes for a DiT with ``patch x patch`` patches: ``num_frames >= 2`` (the first frame is the
        conditioning image) and sides divisible by ``factor * patch``; else a ``ValueError`` naming the size."""
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (the conditioning frame and one generated), got {num_frames}")
        multiple = self.factor * patch
        if height % multiple or width % multiple:
            raise ValueError(
                f"height and width must be multiples of {multiple} ({self.factor}x space-to-depth, "
                f"{patch}x{patch} patches), got {height}x{width}"
            )

    def encode(self, video: Tensor) -> Tensor:
        """Videos ``(B, T, 3, H, W)`` in ``[0, 1]`` to latents ``(B, 3 f^2, T, H/f, W/f)``."""
        batch, frames = video.shape[:2]
        latents = F.pixel_unshuffle(video.flatten(0, 1) * 2 - 1, self.factor)
        return latents.unflatten(0, (batch, frames)).transpose(1, 2)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``(B, 3 f^2, T, h, w)`` to videos ``(B, T, 3, f h, f w)`` in ``[0, 1]`` (clamped)."""
        batch, _, frames = latents.shape[:3]
        pixels = F.pixel_shuffle(latents.transpose(1, 2).flatten(0, 1), self.factor)
        return ((pixels + 1) / 2).clamp(0, 1).unflatten(0, (batch, frames))
