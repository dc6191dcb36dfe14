"""Analytic ray casting of procedural scenes (pure torch, CPU): video with exact depth and world points.

Convention:
    - Cameras follow :mod:`lyra_rl.camera`: OpenCV axes, world-to-camera ``cam_from_world`` 4x4
      extrinsics (``X_cam = R @ X_world + t``), intrinsics ``K`` 3x3 in pixels.
    - Pixel-center convention: the center of the pixel at row ``i`` and column ``j`` is the point
      ``(u, v) = (j, i)``; a world point ``X`` projects to ``(u, v) = dehom(K (R X + t))``.
    - Face indices are those of :mod:`lyra_rl.data.scenes`.
    - Videos are ``(T, 3, H, W)`` float32 in ``[0, 1]``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .scenes import Scene
from .textures import MipAtlas, build_mip_atlas

__all__ = ["Rendering", "render"]

_DIRECTION_EPS = 1e-12  # replaces exactly-zero ray direction components (keeps the slab test finite)


@dataclass(frozen=True)
class Rendering:
    """Frames and exact geometry of a rendered camera trajectory.

    Attributes:
        frames: colors, shape :math:`(T, 3, H, W)` float32 in ``[0, 1]`` (sub-pixel anti-aliased).
        depth: z-depth in the camera frame of the surface seen through each pixel center, shape
            :math:`(T, H, W)` float32, always finite and positive.
        world_points: world point hit by the ray through each pixel center, shape :math:`(T, H, W, 3)`.
        face_ids: index of the face hit through each pixel center (see :mod:`lyra_rl.data.scenes`), shape
            :math:`(T, H, W)` int64.
    """

    frames: Tensor
    depth: Tensor
    world_points: Tensor
    face_ids: Tensor


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


def _shade(atlas: MipAtlas, tables: _FaceTables, rays: _Rays, depth: Tensor, face: Tensor, focal: float) -> Tensor:
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
        scene: the scene, from :func:`~lyra_rl.data.scenes.make_scene`.
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
    atlas = build_mip_atlas(scene.textures)
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
