import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lyra_rl.camera import default_intrinsics
from lyra_rl.data.renderer import Rendering, render
from lyra_rl.data.scenes import Scene, make_scene


def pose(yaw_degrees: float = 0.0, center=(0.0, 0.0, 0.0), pitch_degrees: float = 0.0, roll_degrees: float = 0.0):
    """cam_from_world (4, 4) float64 of a camera at ``center`` turned by yaw (about y; positive turns towards
    +x), then pitch (about x) and roll (about z)."""
    yaw, pitch, roll = (math.radians(a) for a in (yaw_degrees, pitch_degrees, roll_degrees))
    ry = torch.tensor([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    rz = torch.tensor([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    world_from_cam = (ry @ rx @ rz).double()
    result = torch.eye(4, dtype=torch.float64)
    result[:3, :3] = world_from_cam.T
    result[:3, 3] = -world_from_cam.T @ torch.tensor(center, dtype=torch.float64)
    return result


def poses(*args) -> torch.Tensor:
    return torch.stack([pose(*a) for a in args]).float()


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """(H, W, 2) pixel-center coordinates (u, v) = (column, row), float64."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([cols, rows], dim=-1).double()


def project(points: torch.Tensor, cam_from_world: torch.Tensor, intrinsics: torch.Tensor):
    """Projects (..., 3) world points in float64: pixels (..., 2) and z-depths (...)."""
    cam = points.double() @ cam_from_world[:3, :3].double().T + cam_from_world[:3, 3].double()
    pixels = cam @ intrinsics.double().T
    return pixels[..., :2] / pixels[..., 2:], cam[..., 2]


def to_gray(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) float frame in [0, 1] to an 8-bit gray image."""
    return cv2.cvtColor((frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)


def sift_keypoints(frame: torch.Tensor) -> int:
    return len(cv2.SIFT_create().detect(to_gray(frame), None))


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(0)


# A moving, rotating trajectory inside the camera region (|x| <= 1.5, |y| <= 0.3, z in [-1, 3.5]).
TRAJECTORY = [
    (0.0, (0.0, 0.0, 0.0)),
    (12.0, (0.2, -0.05, 0.5), 3.0, -2.0),
    (-25.0, (-0.6, 0.1, 1.2), -4.0, 1.5),
    (40.0, (1.0, 0.25, 2.5), 2.0, 0.0),
]


def test_same_seed_gives_identical_renders_and_other_seeds_differ():
    cameras = poses((0.0,), (30.0, (0.5, 0.0, 1.0)))
    intrinsics = default_intrinsics(32, 48)
    scene, same, other = make_scene(5), make_scene(5), make_scene(6)
    assert all(torch.equal(getattr(scene, name), getattr(same, name)) for name in scene.__dataclass_fields__)
    first = render(scene, cameras, intrinsics, 32, 48)
    again = render(same, cameras, intrinsics, 32, 48)
    assert torch.equal(first.frames, again.frames)
    assert torch.equal(first.world_points, again.world_points)
    assert not torch.equal(scene.room_min, other.room_min)
    assert (first.frames - render(other, cameras, intrinsics, 32, 48).frames).abs().mean() > 0.05


def test_every_pixel_is_hit_along_a_yaw_sweep_and_forward_motion(scene):
    sweep = [(yaw, (0.0, 0.0, 0.0)) for yaw in range(-90, 91, 30)]
    forward = [(0.0, (0.0, 0.0, 3.5)), (90.0, (1.5, 0.3, 3.5)), (-90.0, (-1.5, -0.3, 3.5)), (45.0, (1.5, 0.3, -1.0))]
    cameras = poses(*sweep, *forward)
    result = render(scene, cameras, default_intrinsics(24, 32), 24, 32)
    assert isinstance(result, Rendering)
    assert result.frames.shape == (len(cameras), 3, 24, 32) and result.frames.dtype == torch.float32
    assert 0.0 <= result.frames.min() and result.frames.max() <= 1.0
    assert torch.isfinite(result.depth).all() and (result.depth > 0).all()
    assert (result.world_points >= scene.room_min - 1e-4).all() and (
        result.world_points <= scene.room_max + 1e-4
    ).all()
    assert ((result.face_ids >= 0) & (result.face_ids < scene.num_faces)).all()
    # Odd sizes put pixel centers exactly on the optical axis: ray directions with exact zero components.
    axis_aligned = render(scene, poses((0.0,), (90.0,)), default_intrinsics(25, 33), 25, 33, supersample=3)
    assert torch.isfinite(axis_aligned.depth).all() and (axis_aligned.depth > 0).all()
    assert torch.isfinite(axis_aligned.frames).all()


def test_world_points_reproject_to_pixel_centers(scene):
    height, width = 48, 80
    cameras = poses(*TRAJECTORY)
    intrinsics = torch.tensor([[50.0, 0.0, 41.3], [0.0, 47.0, 22.8], [0.0, 0.0, 1.0]])
    result = render(scene, cameras, intrinsics, height, width)
    grid = pixel_grid(height, width)
    for k in range(len(cameras)):
        pixels, depth = project(result.world_points[k], cameras[k], intrinsics)
        assert (pixels - grid).abs().max() < 0.01
        assert ((depth - result.depth[k].double()).abs() / depth).max() < 1e-5


def bilinear(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Samples ``image (C, H, W)`` at pixel-center coordinates ``pixels (N, 2)``: ``(N, C)``."""
    height, width = image.shape[-2:]
    grid = torch.stack([(2 * pixels[:, 0] + 1) / width - 1, (2 * pixels[:, 1] + 1) / height - 1], dim=-1)
    return F.grid_sample(image[None].double(), grid[None, None].double(), align_corners=False)[0, :, 0].T


def corresponding_pixels(result: Rendering, cameras, intrinsics, k: int, stride: int = 3):
    """Pixels of frame 0 seen in frame k on the same face, away from face boundaries in frame k.

    Returns the frame-0 pixel indices (N, 2) (row, column) and their projections (N, 2) into frame k.
    """
    height, width = result.depth.shape[1:]
    rows, cols = torch.meshgrid(torch.arange(1, height - 1, stride), torch.arange(1, width - 1, stride), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    pixels, depth = project(result.world_points[0, rows, cols], cameras[k], intrinsics)
    in_bounds = (pixels >= 1) & (pixels <= torch.tensor([width - 2, height - 2], dtype=torch.float64))
    inside = (depth > 0) & in_bounds.all(-1)
    rows, cols, pixels = rows[inside], cols[inside], pixels[inside]
    face = result.face_ids[0, rows, cols]
    c0, r0 = pixels[:, 0].floor().long(), pixels[:, 1].floor().long()
    same_face = torch.stack([result.face_ids[k, r0 + dr, c0 + dc] == face for dr in (0, 1) for dc in (0, 1)]).all(0)
    return torch.stack([rows, cols], -1)[same_face], pixels[same_face]


@pytest.fixture(scope="module")
def trajectory_rendering(scene):
    """``TRAJECTORY`` rendered at 96 x 160: ``(cameras, intrinsics, rendering)``."""
    height, width = 96, 160
    cameras = poses(*TRAJECTORY)
    intrinsics = default_intrinsics(height, width)
    return cameras, intrinsics, render(scene, cameras, intrinsics, height, width)


def test_world_points_agree_across_frames(trajectory_rendering):
    """A frame-0 surface point, projected into frame k, is where frame k's depth map puts that surface.

    Frame k's inverse depth is interpolated bilinearly at the projection: on a plane, inverse depth is an
    affine function of the pixel coordinates, so this is exact away from face boundaries.
    """
    cameras, intrinsics, result = trajectory_rendering
    for k in range(1, len(cameras)):
        source, pixels = corresponding_pixels(result, cameras, intrinsics, k)
        assert len(source) > 200
        expected = result.world_points[0, source[:, 0], source[:, 1]].double()
        depth = 1 / bilinear(1 / result.depth[k][None], pixels)
        homogeneous = torch.cat([pixels, torch.ones(len(pixels), 1, dtype=torch.float64)], -1)
        rays = homogeneous @ torch.linalg.inv(intrinsics.double()).T
        pose_k = cameras[k].double()
        points = (depth * rays - pose_k[:3, 3]) @ pose_k[:3, :3]  # R^T (z K^-1 p - t)
        assert (points - expected).norm(dim=-1).max() < 1e-3


def test_colors_are_view_independent(trajectory_rendering):
    """Brightness constancy: a surface point has (nearly) the same color in every frame that sees it."""
    cameras, intrinsics, result = trajectory_rendering
    for k in range(1, len(cameras)):
        source, pixels = corresponding_pixels(result, cameras, intrinsics, k)
        expected = result.frames[0, :, source[:, 0], source[:, 1]].T.double()
        sampled = bilinear(result.frames[k], pixels)
        difference = (sampled - expected).abs()
        assert difference.median() < 0.03
        assert difference.mean() < 0.06


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_textures_are_rich_enough_for_sift(seed):
    scene = make_scene(seed)
    cameras = poses((0.0,), (60.0, (0.5, 0.0, 1.0)), (-90.0, (-1.0, 0.2, 3.0)))
    for (height, width), minimum in [((128, 224), 150), ((64, 96), 40)]:
        result = render(scene, cameras, default_intrinsics(height, width), height, width)
        counts = [sift_keypoints(frame) for frame in result.frames]
        assert min(counts) >= minimum, f"seed {seed} {height}x{width}: {counts}"


def test_sift_matches_agree_with_the_ground_truth_geometry(scene):
    """Texture features match across views, at the positions the known geometry predicts."""
    cameras = poses((0.0,), (15.0, (0.3, 0.0, 0.7)))
    sift = cv2.SIFT_create()
    for (height, width), minimum in [((128, 224), 100), ((64, 96), 15)]:
        intrinsics = default_intrinsics(height, width)
        result = render(scene, cameras, intrinsics, height, width)
        (keys0, desc0), (keys1, desc1) = (sift.detectAndCompute(to_gray(frame), None) for frame in result.frames)
        matches = [a for a, b in cv2.BFMatcher().knnMatch(desc0, desc1, k=2) if a.distance < 0.8 * b.distance]
        source = torch.tensor([keys0[m.queryIdx].pt for m in matches]).round().long()
        target = torch.tensor([keys1[m.trainIdx].pt for m in matches], dtype=torch.float64)
        predicted, _ = project(result.world_points[0, source[:, 1], source[:, 0]], cameras[1], intrinsics)
        correct = int(((predicted - target).norm(dim=-1) < 2.0).sum())
        assert correct >= minimum and correct >= 0.5 * len(matches), f"{height}x{width}: {correct}/{len(matches)}"


def test_supersampling_only_smooths(scene):
    cameras = poses((0.0,), (20.0, (0.3, 0.0, 1.0)))
    intrinsics = default_intrinsics(64, 96)
    sharp = render(scene, cameras, intrinsics, 64, 96, supersample=1)
    smooth = render(scene, cameras, intrinsics, 64, 96, supersample=3)
    assert torch.equal(sharp.world_points, smooth.world_points)
    assert (sharp.frames - smooth.frames).abs().mean() < 0.05


def test_per_frame_intrinsics(scene):
    cameras = poses((0.0,), (10.0,))
    intrinsics = torch.stack([default_intrinsics(32, 48), default_intrinsics(32, 48, fov_x_degrees=50.0)])
    result = render(scene, cameras, intrinsics, 32, 48)
    for k in range(2):
        pixels, _ = project(result.world_points[k], cameras[k], intrinsics[k])
        assert (pixels - pixel_grid(32, 48)).abs().max() < 0.01


def test_default_intrinsics_follow_the_pixel_center_convention():
    intrinsics = default_intrinsics(64, 96, fov_x_degrees=90.0)
    assert intrinsics.shape == (3, 3)
    assert intrinsics[0, 0] == pytest.approx(48.0) and intrinsics[1, 1] == pytest.approx(48.0)
    assert intrinsics[0, 2] == pytest.approx(47.5) and intrinsics[1, 2] == pytest.approx(31.5)


@pytest.mark.parametrize(
    "cameras, intrinsics, height, width",
    [
        (torch.eye(4), default_intrinsics(32, 32), 32, 32),  # missing time axis
        (torch.eye(4)[None], torch.eye(3)[None].expand(2, 3, 3), 32, 32),  # intrinsics for 2 frames
        (torch.eye(4)[None], default_intrinsics(32, 32), 4, 32),  # too small
        (torch.full((1, 4, 4), float("nan")), default_intrinsics(32, 32), 32, 32),  # non-finite
        (2 * torch.eye(4)[None], default_intrinsics(32, 32), 32, 32),  # not rigid
        (poses((0.0, (0.0, 0.0, 100.0))), default_intrinsics(32, 32), 32, 32),  # outside the room
    ],
)
def test_invalid_inputs_raise_value_error(scene, cameras, intrinsics, height, width):
    with pytest.raises(ValueError):
        render(scene, cameras, intrinsics, height, width)
