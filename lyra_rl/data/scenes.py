"""Procedural textured 3D rooms rendered by analytic ray casting (pure torch, CPU).

The renderer produces videos with exactly known geometry (depth and the world point of every pixel),
on which 3D-consistency rewards are tested and benchmarked.

Convention:
    - OpenCV camera axes: x right, y down, z forward. Extrinsics are world-to-camera ``cam_from_world``
      4x4 matrices (``X_cam = R @ X_world + t``); intrinsics ``K`` are 3x3 in pixels.
    - Pixel-center convention: the center of the pixel at row ``i`` and column ``j`` is the point
      ``(u, v) = (j, i)``; a world point ``X`` projects to ``(u, v) = dehom(K (R X + t))``.
    - The world frame is the camera of frame 0 of the default trajectories: the room's floor is the
      plane ``y = room_max[1] > 0`` below the camera, its ceiling ``y = room_min[1] < 0`` above it.
    - Faces: primitive ``p`` (``0`` = the room, ``1 + b`` = box ``b``) owns the faces ``6 p + 2 a + s``
      with ``a`` the axis of the face normal (0 = x, 1 = y, 2 = z) and ``s = 0`` for the plane at the
      primitive's minimum along ``a``, ``s = 1`` for the plane at its maximum.
    - Videos are ``(T, 3, H, W)`` float32 in ``[0, 1]``.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lyra_rl.camera import default_intrinsics

__all__ = ["Rendering", "Scene", "default_intrinsics", "make_scene", "render"]

# Cameras of the benchmark trajectories stay in |x| <= 1.5, |y| <= 0.3, z in [-1, 3.5]; boxes stay out of
# this wider column so that no camera is ever inside or right against a box.
_KEEP_OUT_HALF_WIDTH = 2.2
_KEEP_OUT_MAX_Z = 4.5
_BOX_GAP = 0.15  # minimal clearance between boxes, walls and the keep-out region (world units)

_LIGHT_TOWARDS = (-0.35, -1.0, -0.55)  # direction towards the light: from above (-y), left and behind
_AMBIENT = 0.55
_DIFFUSE = 0.45

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
_DIRECTION_EPS = 1e-12  # replaces exactly-zero ray direction components (keeps the slab test finite)


@dataclass(frozen=True)
class Scene:
    """A closed, textured room with axis-aligned boxes standing on its floor.

    Attributes:
        room_min: minimum corner of the room box, shape :math:`(3,)` (``room_min[1]`` is the ceiling).
        room_max: maximum corner of the room box, shape :math:`(3,)` (``room_max[1]`` is the floor).
        box_min: minimum corners of the boxes, shape :math:`(B, 3)`.
        box_max: maximum corners of the boxes, shape :math:`(B, 3)` (``box_max[:, 1]`` is the floor).
        textures: RGB texture bank, shape :math:`(N, 3, S, S)` float32 in ``[0, 1]``, ``S`` a power of two;
            textures tile the plane (they repeat with wrap-around).
        face_texture: texture index of each face, shape :math:`(F,)` int64 with ``F = 6 (B + 1)``.
        face_tile_size: world-space size of one texture repetition on each face, shape :math:`(F,)`.
        face_uv_offset: texture-space offset of each face in ``[0, 1)``, shape :math:`(F, 2)`.
        face_shade: constant Lambertian shading factor (ambient + diffuse) of each face, shape :math:`(F,)`.

    Convention:
        A point ``p`` on a face with normal axis ``a`` has texture coordinates
        ``(p[t0], p[t1]) / face_tile_size + face_uv_offset`` (modulo 1) with the tangent axes
        ``(t0, t1) = (z, y), (x, z), (x, y)`` for ``a = x, y, z``; faces are indexed as in the module
        docstring.
    """

    room_min: Tensor
    room_max: Tensor
    box_min: Tensor
    box_max: Tensor
    textures: Tensor
    face_texture: Tensor
    face_tile_size: Tensor
    face_uv_offset: Tensor
    face_shade: Tensor

    @property
    def num_boxes(self) -> int:
        """Number of boxes ``B``."""
        return self.box_min.shape[0]

    @property
    def num_faces(self) -> int:
        """Number of faces ``F = 6 (B + 1)``."""
        return 6 * (self.num_boxes + 1)


@dataclass(frozen=True)
class Rendering:
    """Frames and exact geometry of a rendered camera trajectory.

    Attributes:
        frames: colors, shape :math:`(T, 3, H, W)` float32 in ``[0, 1]`` (sub-pixel anti-aliased).
        depth: z-depth in the camera frame of the surface seen through each pixel center, shape
            :math:`(T, H, W)` float32, always finite and positive.
        world_points: world point hit by the ray through each pixel center, shape :math:`(T, H, W, 3)`.
        face_ids: index of the face hit through each pixel center (see the module docstring), shape
            :math:`(T, H, W)` int64.
    """

    frames: Tensor
    depth: Tensor
    world_points: Tensor
    face_ids: Tensor


# --------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------


def _periodic_noise(generator: torch.Generator, size: int, cells: int) -> Tensor:
    """Tileable value noise ``(size, size)`` in ``[0, 1]``: a random ``cells x cells`` grid, bicubic."""
    coarse = torch.rand(1, 1, cells, cells, generator=generator)
    scale = size // cells
    fine = F.interpolate(F.pad(coarse, (2, 2, 2, 2), mode="circular"), scale_factor=scale, mode="bicubic")
    return fine[0, 0, 2 * scale : 2 * scale + size, 2 * scale : 2 * scale + size]


def _fbm(generator: torch.Generator, size: int, base_cells: int = 4, octaves: int = 5) -> Tensor:
    """Tileable fractal (fBm) value noise ``(size, size)`` normalised to ``[0, 1]``."""
    field = sum(
        0.55**octave * _periodic_noise(generator, size, min(base_cells * 2**octave, size))
        for octave in range(octaves)
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


@functools.lru_cache(maxsize=None)
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


def _texture_bank(generator: torch.Generator, size: int) -> Tensor:
    """Seeded bank of photographs and procedural textures, shape ``(N, 3, size, size)``."""
    photo_order = torch.randperm(len(_PHOTOS), generator=generator)[:_PHOTOS_PER_SCENE].tolist()
    procedural = (_noise_texture, _checker_texture, _voronoi_texture, _blob_texture)
    textures = [_photo_texture(generator, size, _PHOTOS[index]) for index in photo_order]
    textures += [
        procedural[index % len(procedural)](generator, size)
        for index in range(_TEXTURE_BANK_SIZE - _PHOTOS_PER_SCENE)
    ]
    return torch.stack([_stretch_contrast(texture) for texture in textures])


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def _sample_room(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Jittered room corners around x in [-6, 6], y in [-2.5, 1.5], z in [-6, 14]."""
    room_min = np.array([-6.0, -2.5, -6.0]) + rng.uniform([-0.5, -0.3, -0.5], [0.5, 0.3, 0.5])
    room_max = np.array([6.0, 1.5, 14.0]) + rng.uniform([-0.5, -0.1, -1.0], [0.5, 0.1, 1.0])
    return room_min, room_max


def _box_is_allowed(lo: np.ndarray, hi: np.ndarray, placed: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether a box stays out of the camera column and clear of the already placed boxes."""
    out_of_column = (
        lo[0] >= _KEEP_OUT_HALF_WIDTH + _BOX_GAP
        or hi[0] <= -_KEEP_OUT_HALF_WIDTH - _BOX_GAP
        or lo[2] >= _KEEP_OUT_MAX_Z + _BOX_GAP
    )
    return out_of_column and all(
        (lo[[0, 2]] > other_hi[[0, 2]] + _BOX_GAP).any() or (hi[[0, 2]] < other_lo[[0, 2]] - _BOX_GAP).any()
        for other_lo, other_hi in placed
    )


def _sample_boxes(
    rng: np.random.Generator, room_min: np.ndarray, room_max: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Places ``count`` non-overlapping boxes on the floor, beside or ahead of the camera column."""
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(1000 * max(count, 1)):
        if len(placed) == count:
            break
        size = rng.uniform([0.6, 0.5, 0.6], [2.0, min(3.0, room_max[1] - room_min[1] - 0.5), 2.0])
        lo_bound, hi_bound = room_min + _BOX_GAP, room_max - _BOX_GAP - size
        if rng.random() < 0.5:  # beside the camera column, at any depth
            side = rng.choice([-1.0, 1.0])
            x_range = (
                (_KEEP_OUT_HALF_WIDTH + _BOX_GAP, hi_bound[0])
                if side > 0
                else (lo_bound[0], -_KEEP_OUT_HALF_WIDTH - _BOX_GAP - size[0])
            )
            z_range = (lo_bound[2], hi_bound[2])
        else:  # ahead of the camera column
            x_range = (lo_bound[0], hi_bound[0])
            z_range = (_KEEP_OUT_MAX_Z + _BOX_GAP, hi_bound[2])
        if x_range[0] >= x_range[1] or z_range[0] >= z_range[1]:
            continue
        lo = np.array([rng.uniform(*x_range), room_max[1] - size[1], rng.uniform(*z_range)])
        hi = lo + size
        hi[1] = room_max[1]  # standing exactly on the floor
        if _box_is_allowed(lo, hi, placed):
            placed.append((lo, hi))
    if len(placed) != count:
        raise RuntimeError(f"could not place {count} boxes in the room")
    return np.array([lo for lo, _ in placed]).reshape(-1, 3), np.array([hi for _, hi in placed]).reshape(-1, 3)


def _face_normals(num_boxes: int) -> Tensor:
    """Unit normals ``(6 (B + 1), 3)``: the room's point inwards, the boxes' outwards."""
    axes = torch.eye(3).repeat_interleave(2, dim=0)  # face 2a + s lies on axis a
    outward = axes * torch.tensor([-1.0, 1.0]).repeat(3)[:, None]
    return torch.cat([-outward, outward.repeat(num_boxes, 1)])


def _face_shades(num_boxes: int) -> Tensor:
    """Lambertian factor ``ambient + diffuse * max(0, n . l)`` of every face, shape ``(F,)``."""
    light = torch.tensor(_LIGHT_TOWARDS)
    light = light / light.norm()
    return _AMBIENT + _DIFFUSE * (_face_normals(num_boxes) @ light).clamp(min=0)


DEFAULT_NUM_BOXES = range(3, 8)
"""Box counts of scenes made without ``num_boxes``."""


def make_scene(seed: int, num_boxes: int | None = None, texture_size: int = 256) -> Scene:
    """Builds a deterministic textured room with boxes standing on its floor.

    The room (about x in [-6, 6], y in [-2.5, 1.5], z in [-6, 14], jittered per seed) is closed, so every
    camera ray inside it hits a surface. Boxes never enter the camera column ``|x| <= 2.2, z <= 4.5`` in
    which the benchmark trajectories move (``|x| <= 1.5, |y| <= 0.3, z in [-1, 3.5]``, any yaw).

    Args:
        seed: seed of the layout, the textures and their placement (no global random state is used).
        num_boxes: number of boxes in ``[0, 7]``; by default drawn from ``DEFAULT_NUM_BOXES`` (3 to 7).
        texture_size: side ``S`` of the square textures, a power of two ``>= 16``.

    Returns:
        The scene; identical seeds give identical scenes.
    """
    if num_boxes is not None and not 0 <= num_boxes <= 7:
        raise ValueError(f"num_boxes must be in [0, 7], got {num_boxes}")
    if texture_size < 16 or texture_size & (texture_size - 1):
        raise ValueError(f"texture_size must be a power of two >= 16, got {texture_size}")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    count = int(rng.integers(DEFAULT_NUM_BOXES.start, DEFAULT_NUM_BOXES.stop)) if num_boxes is None else num_boxes
    room_min, room_max = _sample_room(rng)
    box_min, box_max = _sample_boxes(rng, room_min, room_max, count)
    textures = _texture_bank(generator, texture_size)

    num_faces = 6 * (count + 1)
    room_textures = torch.randperm(textures.shape[0], generator=generator)[:6]
    box_textures = torch.randint(textures.shape[0], (num_faces - 6,), generator=generator)
    tile_low = torch.tensor([2.0] * 6 + [0.8] * (num_faces - 6))
    tile_high = torch.tensor([4.0] * 6 + [2.0] * (num_faces - 6))
    return Scene(
        room_min=torch.from_numpy(room_min).float(),
        room_max=torch.from_numpy(room_max).float(),
        box_min=torch.from_numpy(box_min).float(),
        box_max=torch.from_numpy(box_max).float(),
        textures=textures,
        face_texture=torch.cat([room_textures, box_textures]),
        face_tile_size=tile_low + (tile_high - tile_low) * torch.rand(num_faces, generator=generator),
        face_uv_offset=torch.rand(num_faces, 2, generator=generator),
        face_shade=_face_shades(count),
    )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MipAtlas:
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


def _build_mip_atlas(textures: Tensor) -> _MipAtlas:
    """Box-filtered mip pyramid of ``textures (N, 3, S, S)`` packed into a :class:`_MipAtlas`."""
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
    return _MipAtlas(image, origin.reshape(-1, 2).T.contiguous(), scale.reshape(-1, 2).T.contiguous(), num_levels)


def _validate_render_inputs(
    scene: Scene, cam_from_world: Tensor, intrinsics: Tensor, height: int, width: int, supersample: int
) -> tuple[Tensor, Tensor]:
    """Checks the render arguments; returns float64 poses ``(T, 4, 4)`` and intrinsics ``(T, 3, 3)``."""
    if not isinstance(cam_from_world, Tensor) or cam_from_world.ndim != 3 or cam_from_world.shape[1:] != (4, 4):
        raise ValueError(f"cam_from_world must be a (T, 4, 4) tensor, got {getattr(cam_from_world, 'shape', None)}")
    num_frames = cam_from_world.shape[0]
    if num_frames == 0:
        raise ValueError("cam_from_world must hold at least one pose")
    if not isinstance(intrinsics, Tensor) or intrinsics.shape not in ((3, 3), (num_frames, 3, 3)):
        shape = getattr(intrinsics, "shape", None)
        raise ValueError(f"intrinsics must have shape (3, 3) or ({num_frames}, 3, 3), got {shape}")
    if not (isinstance(height, numbers.Integral) and isinstance(width, numbers.Integral) and min(height, width) >= 8):
        raise ValueError(f"height and width must be integers >= 8, got {height} x {width}")
    if not (isinstance(supersample, numbers.Integral) and 1 <= supersample <= 8):
        raise ValueError(f"supersample must be an integer in [1, 8], got {supersample}")
    poses = cam_from_world.detach().to("cpu", torch.float64)
    ks = intrinsics.detach().to("cpu", torch.float64).expand(num_frames, 3, 3)
    if not (torch.isfinite(poses).all() and torch.isfinite(ks).all()):
        raise ValueError("cam_from_world and intrinsics must be finite")
    rotations = poses[:, :3, :3]
    identity = torch.eye(3, dtype=torch.float64)
    if (
        (poses[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)).abs().max() > 1e-6
        or (rotations @ rotations.transpose(1, 2) - identity).abs().max() > 1e-4
        or (torch.linalg.det(rotations) <= 0).any()
    ):
        raise ValueError("cam_from_world must hold rigid transforms [[R, t], [0, 0, 0, 1]] with R a rotation")
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    if (ks[:, 2] - bottom).abs().max() > 1e-9 or (ks[:, 0, 0] <= 0).any() or (ks[:, 1, 1] <= 0).any():
        raise ValueError("intrinsics must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    centers = -(rotations.transpose(1, 2) @ poses[:, :3, 3:]).squeeze(-1)
    room_min, room_max = scene.room_min.double(), scene.room_max.double()
    if ((centers <= room_min) | (centers >= room_max)).any():
        raise ValueError("every camera center must lie inside the room")
    box_min, box_max = scene.box_min.double(), scene.box_max.double()
    inside_box = ((centers[:, None] >= box_min) & (centers[:, None] <= box_max)).all(-1)
    if inside_box.any():
        raise ValueError("a camera center lies inside a box")
    return poses, ks


def _subpixel_intrinsics(intrinsics: Tensor, supersample: int) -> Tensor:
    """Intrinsics ``(3, 3)`` of the ``supersample``-times finer grid of sub-pixel ray centers.

    Sub-pixel ``(r, c)`` of the fine grid has its center at ``((c + 0.5) / s - 0.5, (r + 0.5) / s - 0.5)``
    in pixel coordinates, which keeps the pixel-center convention on both grids.
    """
    offset = (supersample - 1) / 2
    refine = intrinsics.new_tensor([[supersample, 0, offset], [0, supersample, offset], [0, 0, 1]])
    return refine @ intrinsics


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 1-D ``table`` and an int64 ``index`` of any shape (``index_select``, fast)."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


@dataclass(frozen=True)
class _FaceTables:
    """Per-face lookup tables, shape :math:`(F,)` each.

    Attributes:
        normal_axis: axis of the face normal (int64).
        tangent_axes: axes ``(t0, t1)`` of the texture coordinates (int64), shape :math:`(2, F)`.
        plane: coordinate of the face's plane along its normal axis.
        inv_tile: texture repetitions per world unit.
        uv_offset: texture-space offset, shape :math:`(2, F)`.
        texel_density: texels per world unit.
        texture: texture index (int64).
        shade: Lambertian shading factor.
    """

    normal_axis: Tensor
    tangent_axes: Tensor
    plane: Tensor
    inv_tile: Tensor
    uv_offset: Tensor
    texel_density: Tensor
    texture: Tensor
    shade: Tensor

    @classmethod
    def from_scene(cls, scene: Scene) -> _FaceTables:
        normal_axis = torch.arange(scene.num_faces) % 6 // 2
        tangents = torch.tensor([[2, 0, 0], [1, 2, 1]])  # (t0, t1) = (z, y), (x, z), (x, y) for x, y, z
        mins = torch.cat([scene.room_min[None], scene.box_min])
        maxs = torch.cat([scene.room_max[None], scene.box_max])
        inv_tile = scene.face_tile_size.reciprocal()
        return cls(
            normal_axis=normal_axis,
            tangent_axes=tangents[:, normal_axis],
            plane=torch.stack([mins, maxs], dim=-1).reshape(-1),  # (P, 3, 2) in face order 6p + 2a + s
            inv_tile=inv_tile,
            uv_offset=scene.face_uv_offset.T.contiguous(),
            texel_density=scene.textures.shape[-1] * inv_tile,
            texture=scene.face_texture,
            shade=scene.face_shade,
        )


@dataclass(frozen=True)
class _Rays:
    """Rays of one frame through a regular grid of sample centers.

    Attributes:
        origin: camera center in world coordinates, shape :math:`(3,)`.
        directions: world-space directions ``R^T K^-1 (c, r, 1)``, shape :math:`(3, h, w)`; their
            camera-space z component is 1, so a ray parameter equals the z-depth. Exact zeros are
            replaced by a tiny positive number.
        projection: ``K [R | t]`` of the grid (float64), shape :math:`(3, 4)`.
    """

    origin: Tensor
    directions: Tensor
    projection: Tensor


def _make_rays(pose: Tensor, intrinsics: Tensor, height: int, width: int) -> _Rays:
    """Rays through the centers of an ``height x width`` grid for a pose and intrinsics (float64 in)."""
    rotation, translation = pose[:3, :3], pose[:3, 3]
    pixel_to_world = (rotation.T @ torch.linalg.inv(intrinsics)).float()
    cols = torch.arange(width, dtype=torch.float32)
    rows = torch.arange(height, dtype=torch.float32)
    directions = torch.addcmul(
        (pixel_to_world[:, 1, None] * rows + pixel_to_world[:, 2, None])[:, :, None],
        pixel_to_world[:, 0, None, None],
        cols,
    )
    directions.masked_fill_(directions == 0, _DIRECTION_EPS)
    origin = -(rotation.T @ translation)
    projection = intrinsics @ torch.cat([rotation, translation[:, None]], dim=1)
    return _Rays(origin.float(), directions, projection)


def _box_window(lo: Tensor, hi: Tensor, rays: _Rays) -> tuple[slice, slice] | None:
    """Rows and columns of the ray grid that can see a box, or ``None`` if it is out of view.

    Uses the bounding rectangle of the projected corners when all lie in front of the camera, the whole
    grid otherwise.
    """
    height, width = rays.directions.shape[1:]
    corners = torch.cartesian_prod(*[torch.stack([lo[a], hi[a]]).double() for a in range(3)])
    projected = torch.cat([corners, torch.ones(8, 1, dtype=torch.float64)], dim=1) @ rays.projection.T
    if (projected[:, 2] <= 1e-6).any():
        return slice(0, height), slice(0, width)
    cols, rows = projected[:, 0] / projected[:, 2], projected[:, 1] / projected[:, 2]
    row_start, row_stop = max(math.floor(rows.min()) - 1, 0), min(math.ceil(rows.max()) + 2, height)
    col_start, col_stop = max(math.floor(cols.min()) - 1, 0), min(math.ceil(cols.max()) + 2, width)
    if row_start >= row_stop or col_start >= col_stop:
        return None
    return slice(row_start, row_stop), slice(col_start, col_stop)


def _cast_room(scene: Scene, rays: _Rays, inverse: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Where each ray leaves the room: ray parameter ``(h, w)`` and face index ``(h, w)`` int64."""
    to_min = scene.room_min - rays.origin
    to_max = scene.room_max - rays.origin
    exit_x, exit_y, exit_z = torch.where(positive, to_max[:, None, None], to_min[:, None, None]).mul_(inverse)
    depth = torch.minimum(exit_x, exit_y)
    axis = (exit_y < exit_x).long()
    axis.masked_fill_(exit_z < depth, 2)
    depth = torch.minimum(depth, exit_z)
    face = 2 * axis + positive.gather(0, axis[None])[0]
    return depth, face


def _cast_box(
    lo: list[float], hi: list[float], face_base: int, origin: list[float], inverse: Tensor, positive: Tensor
) -> tuple[Tensor, Tensor | int, Tensor]:
    """Slab test of rays against one box that does not contain the ray origin.

    The entry plane along each axis is fixed by the side of the box the origin lies on, so no per-ray
    sorting of the slab planes is needed.

    Args:
        lo: minimum corner of the box.
        hi: maximum corner of the box.
        face_base: index of the box's first face.
        origin: ray origin, outside the box.
        inverse: reciprocal ray directions, shape :math:`(3, h, w)`.
        positive: whether each direction component is positive, shape :math:`(3, h, w)`.

    Returns:
        Entry parameter ``(h, w)``, entry face (int64 ``(h, w)`` or one int) and exit parameter ``(h, w)``;
        a ray hits the box in front of its origin iff ``entry < exit``.
    """
    near = near_face = far = None
    for axis in range(3):
        if lo[axis] < origin[axis] < hi[axis]:
            exit_offset = torch.where(positive[axis], hi[axis] - origin[axis], lo[axis] - origin[axis])
            axis_far = exit_offset * inverse[axis]
        else:
            below = origin[axis] <= lo[axis]
            near_plane, far_plane = (lo[axis], hi[axis]) if below else (hi[axis], lo[axis])
            axis_near = (near_plane - origin[axis]) * inverse[axis]
            axis_far = (far_plane - origin[axis]) * inverse[axis]
            axis_face = face_base + 2 * axis + (0 if below else 1)
            if near is None:
                near, near_face = axis_near, axis_face
            else:
                near_face = torch.where(axis_near > near, axis_face, near_face)
                near = torch.maximum(near, axis_near)
        far = axis_far if far is None else torch.minimum(far, axis_far)
    return near, near_face, far


def _cast(scene: Scene, rays: _Rays) -> tuple[Tensor, Tensor]:
    """Nearest hit of every ray: ray parameter (= z-depth) ``(h, w)`` and face index ``(h, w)`` int64.

    The room is hit where the ray leaves it (slab method on its interior), each box where the ray enters
    it (slab method); each box is only tested on the part of the grid its projection can cover.
    """
    inverse = rays.directions.reciprocal()
    positive = rays.directions > 0
    depth, face = _cast_room(scene, rays, inverse, positive)
    origin = rays.origin.tolist()
    for box, (lo, hi) in enumerate(zip(scene.box_min, scene.box_max)):
        window = _box_window(lo, hi, rays)
        if window is None:
            continue
        full_window = (slice(None), *window)
        near, near_face, far = _cast_box(
            lo.tolist(), hi.tolist(), 6 * (box + 1), origin, inverse[full_window], positive[full_window]
        )
        current = depth[window]
        hit = (near < far) & (near < current)
        depth[window] = torch.where(hit, near, current)
        face[window] = torch.where(hit, near_face, face[window])
    return depth, face


def _hit_points(rays: _Rays, depth: Tensor) -> Tensor:
    """World points ``origin + depth * direction`` of the hits, shape ``(3, h, w)``."""
    return torch.addcmul(rays.origin[:, None, None], depth, rays.directions)


def _exact_hit_points(rays: _Rays, depth: Tensor, face: Tensor, tables: _FaceTables) -> Tensor:
    """World points ``(3, h, w)`` of the hits with the coordinate along the face normal set exactly."""
    points = _hit_points(rays, depth)
    return points.scatter_(0, _lookup(tables.normal_axis, face)[None], _lookup(tables.plane, face)[None])


def _shade(atlas: _MipAtlas, tables: _FaceTables, rays: _Rays, depth: Tensor, face: Tensor, focal: float) -> Tensor:
    """Colors ``(3, h, w)`` of the hits: trilinear mip-mapped texture lookup times the face's shade.

    The level of detail is ``log2`` of the number of texels under one sample: the sample footprint
    ``depth / focal`` divided by the square root of the cosine of the incidence angle (the geometric mean
    of the footprint's two axes), in texels.
    """
    points = _hit_points(rays, depth)
    tangents = points.gather(0, torch.stack([_lookup(axes, face) for axes in tables.tangent_axes]))
    inv_tile = _lookup(tables.inv_tile, face)
    u = torch.addcmul(_lookup(tables.uv_offset[0], face), tangents[0], inv_tile)
    v = torch.addcmul(_lookup(tables.uv_offset[1], face), tangents[1], inv_tile)
    u, v = u - u.floor(), v - v.floor()

    x, y, z = rays.directions
    normal_component = rays.directions.gather(0, _lookup(tables.normal_axis, face)[None])[0]
    # (|d| / |d_n|)^(1/2) = (|d|^2 / d_n^2)^(1/4)
    obliquity = torch.addcmul(torch.addcmul(x * x, y, y), z, z).div_(normal_component.square()).sqrt_().sqrt_()
    footprint = depth * _lookup(tables.texel_density / focal, face) * obliquity
    lod = torch.log2(footprint).clamp_(0, atlas.num_levels - 1)
    level = lod.floor()
    row = _lookup(tables.texture, face) * atlas.num_levels + level.long()
    rows = torch.stack([row, row + (level < atlas.num_levels - 1).long()])  # (2, h, w): fine, coarse level
    height, width = depth.shape
    grid = torch.empty(2, height, width, 2)
    for axis, coordinate in enumerate((u, v)):
        origin, scale = _lookup(atlas.origin[axis], rows), _lookup(atlas.scale[axis], rows)
        torch.addcmul(origin, scale, coordinate, out=grid[..., axis])
    samples = F.grid_sample(
        atlas.image, grid.view(1, 2 * height, width, 2), mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    color = torch.lerp(samples[:, :height], samples[:, height:], lod - level)
    return color * _lookup(tables.shade, face)


def render(
    scene: Scene,
    cam_from_world: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    supersample: int = 2,
) -> Rendering:
    """Renders a camera trajectory through a scene by analytic ray casting.

    Colors average ``supersample x supersample`` sub-pixel rays (anti-aliasing) with trilinear mip-mapped
    textures; depth, world points and face indices come from the exact pixel-center rays, so projecting
    ``world_points`` with ``intrinsics`` and ``cam_from_world`` gives back the pixel-center grid. Frames are
    rendered one at a time to bound memory.

    Args:
        scene: the scene, from :func:`make_scene`.
        cam_from_world: world-to-camera rigid transforms, shape :math:`(T, 4, 4)`; every camera center
            must lie inside the room and outside every box.
        intrinsics: pixel intrinsics, shape :math:`(3, 3)` or :math:`(T, 3, 3)`, last row ``(0, 0, 1)``.
        height: image height ``H >= 8``.
        width: image width ``W >= 8``.
        supersample: sub-pixel rays per pixel along each axis, in ``[1, 8]``.

    Returns:
        The :class:`Rendering` (frames, depth, world points and face indices) on the CPU.

    Raises:
        ValueError: on wrong shapes, sizes below 8, non-finite or non-rigid poses, malformed intrinsics,
            or a camera center outside the room or inside a box.

    Convention:
        OpenCV axes and pixel-center coordinates: pixel ``(row i, column j)`` is centered at
        ``(u, v) = (j, i)``.
    """
    poses, ks = _validate_render_inputs(scene, cam_from_world, intrinsics, height, width, supersample)
    height, width, supersample = int(height), int(width), int(supersample)
    atlas = _build_mip_atlas(scene.textures)
    tables = _FaceTables.from_scene(scene)
    frames, depths, points, faces = [], [], [], []
    for pose, k in zip(poses, ks):
        center_rays = _make_rays(pose, k, height, width)
        depth, face = _cast(scene, center_rays)
        depths.append(depth)
        faces.append(face)
        points.append(_exact_hit_points(center_rays, depth, face, tables).permute(1, 2, 0))

        if supersample == 1:
            sub_k, sub_rays, sub_depth, sub_face = k, center_rays, depth, face
        else:
            sub_k = _subpixel_intrinsics(k, supersample)
            sub_rays = _make_rays(pose, sub_k, height * supersample, width * supersample)
            sub_depth, sub_face = _cast(scene, sub_rays)
        focal = math.sqrt(sub_k[0, 0].item() * sub_k[1, 1].item())
        color = _shade(atlas, tables, sub_rays, sub_depth, sub_face, focal)
        frames.append(F.avg_pool2d(color[None], supersample)[0])
    return Rendering(
        frames=torch.stack(frames).clamp_(0, 1),
        depth=torch.stack(depths),
        world_points=torch.stack(points),
        face_ids=torch.stack(faces),
    )
