"""Seeded texture bank of the procedural scenes, and its mip-mapped atlas for the renderer.

Textures are RGB ``(3, S, S)`` float32 in ``[0, 1]`` with ``S`` a power of two; every one tiles the plane
(it repeats with wrap-around). A bank mixes scikit-image photographs with four procedural families
(marble-like noise, checkerboards, Voronoi mosaics, discs), all with strong gray-level contrast so that
feature detectors find texture everywhere. No global random state is used: each function draws from the
``torch.Generator`` it is given.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MipAtlas", "build_mip_atlas", "texture_bank"]

_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "immunohistochemistry",
    "stereo_motorcycle",
    "camera",
    "coins",
)
_TEXTURE_BANK_SIZE = 12
_PHOTOS_PER_SCENE = 5


def _periodic_noise(generator: torch.Generator, size: int, cells: int) -> Tensor:
    """Tileable value noise ``(size, size)`` in ``[0, 1]``: a random ``cells x cells`` grid, bicubic."""
    coarse = torch.rand(1, 1, cells, cells, generator=generator)
    scale = size // cells
    fine = F.interpolate(F.pad(coarse, (2, 2, 2, 2), mode="circular"), scale_factor=scale, mode="bicubic")
    return fine[0, 0, 2 * scale : 2 * scale + size, 2 * scale : 2 * scale + size]


def _fbm(generator: torch.Generator, size: int, base_cells: int = 4, octaves: int = 5) -> Tensor:
    """Tileable fractal (fBm) value noise ``(size, size)`` normalised to ``[0, 1]``."""
    field = sum(
        0.55**octave * _periodic_noise(generator, size, min(base_cells * 2**octave, size)) for octave in range(octaves)
    )
    return (field - field.min()) / (field.max() - field.min())


def _random_palette(generator: torch.Generator, num_colors: int) -> Tensor:
    """Random RGB palette ``(num_colors, 3)`` of random hues alternating dark and bright luminances.

    The alternation guarantees gray-level contrast between consecutive colors (feature detectors work on
    luminance): even colors have a luminance in ``[0.05, 0.3]``, odd ones in ``[0.6, 0.95]``.
    """
    hue, saturation, target = torch.rand(3, num_colors, generator=generator)
    # Fully bright HSV color: channel n is 1 - s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1.
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0]) + 6 * hue[:, None], 6)
    colors = 1 - (0.3 + 0.7 * saturation[:, None]) * torch.minimum(k, 4 - k).clamp(0, 1)
    luminance = colors @ torch.tensor([0.299, 0.587, 0.114])
    target = torch.where(torch.arange(num_colors) % 2 == 0, 0.05 + 0.25 * target, 0.6 + 0.35 * target)
    # Darken by scaling, brighten by mixing with white; both reach the target luminance exactly.
    whiteness = ((target - luminance) / (1 - luminance)).clamp(min=0)[:, None]
    scaled = colors * (target / luminance).clamp(max=1)[:, None]
    return scaled * (1 - whiteness) + whiteness


def _apply_palette(field: Tensor, palette: Tensor, repeats: float) -> Tensor:
    """Maps a scalar field ``(S, S)`` in ``[0, 1]`` through a palette ``(P, 3)``: ``(3, S, S)``.

    The field runs ``repeats`` times back and forth over the palette (a continuous triangle wave).
    """
    phase = torch.remainder(field * repeats, 2.0)
    position = (1.0 - (phase - 1.0).abs()) * (palette.shape[0] - 1)
    lower = position.floor().clamp(max=palette.shape[0] - 2).long()
    weight = (position - lower)[..., None]
    colors = palette[lower] * (1 - weight) + palette[lower + 1] * weight
    return colors.permute(2, 0, 1)


def _noise_texture(generator: torch.Generator, size: int) -> Tensor:
    """Marble-like colored fBm."""
    repeats = 1.2 + 0.8 * torch.rand((), generator=generator).item()
    return _apply_palette(_fbm(generator, size), _random_palette(generator, 5), repeats)


def _checker_texture(generator: torch.Generator, size: int) -> Tensor:
    """Checkerboard whose cells have random palette colors, modulated by fBm."""
    cells = [8, 16][int(torch.randint(2, (), generator=generator))]
    palette = _random_palette(generator, 6)
    cell_colors = palette[torch.randint(6, (cells, cells), generator=generator)].permute(2, 0, 1)
    colors = cell_colors.repeat_interleave(size // cells, 1).repeat_interleave(size // cells, 2)
    return colors * (0.55 + 0.45 * _fbm(generator, size, base_cells=8))


def _voronoi_texture(generator: torch.Generator, size: int) -> Tensor:
    """Mosaic of random colored cells (nearest of random sites, wrapping around), shaded by fBm."""
    num_sites = int(torch.randint(12, 48, (), generator=generator))
    sites = size * torch.rand(num_sites, 2, generator=generator)
    palette = _random_palette(generator, 6)
    colors = palette[torch.randint(6, (num_sites,), generator=generator)]
    coords = torch.arange(size, dtype=torch.float32)
    dx = (coords[None, :] - sites[:, 0, None]).abs()  # (sites, size)
    dy = (coords[None, :] - sites[:, 1, None]).abs()
    dx, dy = torch.minimum(dx, size - dx), torch.minimum(dy, size - dy)
    nearest = (dy[:, :, None].square() + dx[:, None, :].square()).argmin(0)  # (size, size)
    return colors[nearest].permute(2, 0, 1) * (0.6 + 0.4 * _fbm(generator, size, base_cells=8))


def _blob_texture(generator: torch.Generator, size: int, num_blobs: int = 60) -> Tensor:
    """Random colored discs (anti-aliased, wrapping around) over a dimmed noise background."""
    texture = 0.5 * _noise_texture(generator, size)
    coords = torch.arange(size, dtype=torch.float32)
    centers = size * torch.rand(num_blobs, 2, generator=generator)
    radii = size * (0.015 + 0.1 * torch.rand(num_blobs, generator=generator) ** 2)
    colors = torch.rand(num_blobs, 3, generator=generator)
    dx = (coords - centers[:, 0, None]).abs()[:, None, :]  # (blobs, 1, size)
    dy = (coords - centers[:, 1, None]).abs()[:, :, None]  # (blobs, size, 1)
    distance = torch.hypot(torch.minimum(dx, size - dx), torch.minimum(dy, size - dy))
    alpha = (radii[:, None, None] - distance + 0.5).clamp(0, 1)
    # Painting blob after blob ("over" compositing): blob i shows through the blobs painted after it.
    transmittance = (1 - alpha).flip(0).cumprod(0).flip(0)  # product over blobs j >= i
    shown = alpha * torch.cat([transmittance[1:], torch.ones_like(transmittance[:1])])
    return texture * transmittance[0] + torch.einsum("bhw,bc->chw", shown, colors)


@functools.cache
def _photo(name: str, size: int) -> Tensor:
    """A photograph shipped with scikit-image, center-cropped and resized: ``(C, size, size)``, C = 1 or 3."""
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle is (left, right, disp)
    image = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
    image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)[:3]
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    square = image[None, :, top : top + side, left : left + side]
    return F.interpolate(square, size=(size, size), mode="bilinear", antialias=True)[0].clamp(0, 1)


def _photo_texture(generator: torch.Generator, size: int, name: str) -> Tensor:
    """A photograph; grayscale ones are colorized with a random two-color gradient."""
    photo = _photo(name, size)
    if photo.shape[0] == 3:
        return photo.clone()
    dark, bright = _random_palette(generator, 2)
    return dark[:, None, None] + (bright - dark)[:, None, None] * photo


def _stretch_contrast(texture: Tensor, low: float = 0.04, high: float = 0.96) -> Tensor:
    """Affinely maps the 1st/99th percentiles of a texture ``(3, S, S)`` to ``[low, high]``, clamped.

    The percentiles are estimated on every 7th value, which is plenty for textures of 48k+ values.
    """
    lo, hi = torch.quantile(texture.flatten()[::7], torch.tensor([0.01, 0.99])).tolist()
    return (low + (texture - lo) * (high - low) / max(hi - lo, 1e-3)).clamp(0.5 * low, 1 - 0.5 * low)


def texture_bank(generator: torch.Generator, size: int) -> Tensor:
    """Seeded bank of photographs and procedural textures, shape ``(N, 3, size, size)``."""
    photo_order = torch.randperm(len(_PHOTOS), generator=generator)[:_PHOTOS_PER_SCENE].tolist()
    procedural = (_noise_texture, _checker_texture, _voronoi_texture, _blob_texture)
    textures = [_photo_texture(generator, size, _PHOTOS[index]) for index in photo_order]
    textures += [
        procedural[index % len(procedural)](generator, size) for index in range(_TEXTURE_BANK_SIZE - _PHOTOS_PER_SCENE)
    ]
    return torch.stack([_stretch_contrast(texture) for texture in textures])


@dataclass(frozen=True)
class MipAtlas:
    """All mip levels of all textures packed in one image, each tile padded by one wrapped texel.

    Attributes:
        image: the atlas, shape :math:`(1, 3, H_a, W_a)`.
        origin: ``grid_sample`` coordinates (``align_corners=False``) of texel-space ``(0, 0)`` of texture
            ``n`` at level ``l``, at index ``n L + l``, shape :math:`(2, N L)` (x, y).
        scale: ``grid_sample`` extent of one texture repetition, same indexing, shape :math:`(2, N L)`.
        num_levels: number of mip levels ``L`` (the finest has the texture size, the coarsest 1 texel).
    """

    image: Tensor
    origin: Tensor
    scale: Tensor
    num_levels: int


def build_mip_atlas(textures: Tensor) -> MipAtlas:
    """Box-filtered mip pyramid of ``textures (N, 3, S, S)`` packed into a :class:`MipAtlas`."""
    num_textures, _, size, _ = textures.shape
    num_levels = int(math.log2(size)) + 1
    levels = [textures]
    for _ in range(num_levels - 1):
        levels.append(F.avg_pool2d(levels[-1], 2))
    width = num_textures * (size + 2)
    height = sum(level.shape[-1] + 2 for level in levels)
    image = torch.zeros(1, 3, height, width)
    origin = torch.zeros(num_textures, num_levels, 2)
    scale = torch.zeros(num_textures, num_levels, 2)
    top = 0
    for index, level in enumerate(levels):
        side = level.shape[-1]
        padded = F.pad(level, (1, 1, 1, 1), mode="circular")
        for texture in range(num_textures):
            left = texture * (side + 2)
            image[0, :, top : top + side + 2, left : left + side + 2] = padded[texture]
            # Texel-space 0 is the left edge of the tile's first texel, one atlas pixel after the pad.
            origin[texture, index] = torch.tensor([2 * (left + 1) / width - 1, 2 * (top + 1) / height - 1])
            scale[texture, index] = torch.tensor([2 * side / width, 2 * side / height])
        top += side + 2
    return MipAtlas(image, origin.reshape(-1, 2).T.contiguous(), scale.reshape(-1, 2).T.contiguous(), num_levels)
