"""Procedural scenes: closed textured rooms with axis-aligned boxes standing on the floor, optionally one
more box ahead of the start camera to orbit around.

The layout (room, boxes, lighting) and the per-face texturing are sampled here from one seed;
:func:`lyra_rl.data.renderer.render` turns a scene and a camera trajectory into video with exactly known
geometry, on which 3D-consistency rewards are tested and benchmarked.

Convention:
    - Cameras follow :mod:`lyra_rl.camera` (OpenCV axes, ``cam_from_world`` extrinsics).
    - The world frame is the camera of frame 0 of the default trajectories: the room's floor is the
      plane ``y = room_max[1] > 0`` below the camera, its ceiling ``y = room_min[1] < 0`` above it.
    - Faces: primitive ``p`` (``0`` = the room, ``1 + b`` = box ``b``) owns the faces ``6 p + 2 a + s``
      with ``a`` the axis of the face normal (0 = x, 1 = y, 2 = z) and ``s = 0`` for the plane at the
      primitive's minimum along ``a``, ``s = 1`` for the plane at its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .textures import texture_bank

__all__ = ["DEFAULT_NUM_BOXES", "PIVOT_DEPTHS", "Scene", "make_scene"]

# Cameras of the benchmark trajectories stay in |x| <= 1.5, |y| <= 0.3, z in [-1, 3.5]; boxes stay out of
# this wider column so that no camera is ever inside or right against a box.
_KEEP_OUT_HALF_WIDTH = 2.2
_KEEP_OUT_MAX_Z = 4.5
_BOX_GAP = 0.15  # minimal clearance between boxes, walls and the keep-out region (world units)
_ROOM_TILE = (2.0, 4.0)  # range of the world-space size of one texture repetition on the room's faces
_BOX_TILE = (0.8, 2.0)  # and on the boxes' faces
# The pivot box: half its footprint sides, and its top (above the camera at y = 0).
_PIVOT_HALF_SIDE = (0.4, 0.7)
_PIVOT_TOP = (-1.2, -0.6)

_LIGHT_TOWARDS = (-0.35, -1.0, -0.55)  # direction towards the light: from above (-y), left and behind
_AMBIENT = 0.55
_DIFFUSE = 0.45


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


def _pivot_box(rng: np.random.Generator, room_max: np.ndarray, pivot_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Corners ``(3,)`` of a box standing on the floor, centred under ``(0, 0, pivot_depth)``, above the camera."""
    half_x, half_z = rng.uniform(*_PIVOT_HALF_SIDE, size=2)
    lo = np.array([-half_x, rng.uniform(*_PIVOT_TOP), pivot_depth - half_z])
    hi = np.array([half_x, room_max[1], pivot_depth + half_z])
    return lo, hi


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


PIVOT_DEPTHS = (1.5, 3.5)
"""Range of ``pivot_depth``: the pivot box stays clear of the start camera and of the other boxes."""


def make_scene(
    seed: int, num_boxes: int | None = None, texture_size: int = 256, pivot_depth: float | None = None
) -> Scene:
    """Builds a deterministic textured room with boxes standing on its floor.

    The room (about x in [-6, 6], y in [-2.5, 1.5], z in [-6, 14], jittered per seed) is closed, so every
    camera ray inside it hits a surface. Boxes never enter the camera column ``|x| <= 2.2, z <= 4.5`` in
    which the benchmark trajectories move (``|x| <= 1.5, |y| <= 0.3, z in [-1, 3.5]``, any yaw; the orbits reach
    ``|x| = 1.93``), except the pivot box.

    Args:
        seed: seed of the layout, the textures and their placement (no global random state is used).
        num_boxes: number of boxes in ``[0, 7]`` besides the pivot box; by default drawn from
            ``DEFAULT_NUM_BOXES`` (3 to 7).
        texture_size: side ``S`` of the square textures, a power of two ``>= 16``.
        pivot_depth: if given (in ``PIVOT_DEPTHS``), one more box, the last, stands on the floor centred
            under the pivot ``(0, 0, pivot_depth)`` of the orbit and dolly presets (see
            :data:`lyra_rl.camera.PIVOT_DEPTH`) and reaches above the camera; its size and texturing are
            drawn from the seed after everything else, so the rest of the scene is that of ``seed`` without it.
            Cameras circling the pivot at distance ``pivot_depth`` stay ``pivot_depth - 1`` or more clear of it.

    Returns:
        The scene; identical arguments give identical scenes.
    """
    if num_boxes is not None and not 0 <= num_boxes <= 7:
        raise ValueError(f"num_boxes must be in [0, 7], got {num_boxes}")
    if texture_size < 16 or texture_size & (texture_size - 1):
        raise ValueError(f"texture_size must be a power of two >= 16, got {texture_size}")
    if pivot_depth is not None and not PIVOT_DEPTHS[0] <= pivot_depth <= PIVOT_DEPTHS[1]:
        raise ValueError(f"pivot_depth must be in [{PIVOT_DEPTHS[0]}, {PIVOT_DEPTHS[1]}], got {pivot_depth}")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    count = int(rng.integers(DEFAULT_NUM_BOXES.start, DEFAULT_NUM_BOXES.stop)) if num_boxes is None else num_boxes
    room_min, room_max = _sample_room(rng)
    box_min, box_max = _sample_boxes(rng, room_min, room_max, count)
    textures = texture_bank(generator, texture_size)

    num_faces = 6 * (count + 1)
    room_textures = torch.randperm(textures.shape[0], generator=generator)[:6]
    box_textures = torch.randint(textures.shape[0], (num_faces - 6,), generator=generator)
    tile_low = torch.tensor([_ROOM_TILE[0]] * 6 + [_BOX_TILE[0]] * (num_faces - 6))
    tile_high = torch.tensor([_ROOM_TILE[1]] * 6 + [_BOX_TILE[1]] * (num_faces - 6))
    face_texture = torch.cat([room_textures, box_textures])
    face_tile_size = tile_low + (tile_high - tile_low) * torch.rand(num_faces, generator=generator)
    face_uv_offset = torch.rand(num_faces, 2, generator=generator)
    if pivot_depth is not None:
        lo, hi = _pivot_box(rng, room_max, pivot_depth)
        box_min, box_max = np.concatenate([box_min, lo[None]]), np.concatenate([box_max, hi[None]])
        face_texture = torch.cat([face_texture, torch.randint(textures.shape[0], (6,), generator=generator)])
        low, high = _BOX_TILE
        face_tile_size = torch.cat([face_tile_size, low + (high - low) * torch.rand(6, generator=generator)])
        face_uv_offset = torch.cat([face_uv_offset, torch.rand(6, 2, generator=generator)])
    return Scene(
        room_min=torch.from_numpy(room_min).float(),
        room_max=torch.from_numpy(room_max).float(),
        box_min=torch.from_numpy(box_min).float(),
        box_max=torch.from_numpy(box_max).float(),
        textures=textures,
        face_texture=face_texture,
        face_tile_size=face_tile_size,
        face_uv_offset=face_uv_offset,
        face_shade=_face_shades(len(box_min)),
    )
