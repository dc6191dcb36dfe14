"""The static-video guard, and the geometric rewards on object-centred motions: an orbit around a box and a dolly
towards it, against frozen, time-reversed and rotating-only versions of the same clip."""

import math

import numpy as np
import pytest
import torch

from lyra_rl.camera import (
    PIVOT_DEPTH,
    Cameras,
    axis_angle_to_matrix,
    default_intrinsics,
    invert_pose,
    make_pose,
    trajectory_preset,
)
from lyra_rl.data.renderer import render
from lyra_rl.data.scenes import make_scene
from lyra_rl.reward import RewardSet
from rewards import EpipolarReward, FeatureMatchingReward, PointCloudReward, PoseConsistencyReward, ReprojectionReward
from rewards.two_view import CommandedCameras, moves_as_commanded

NUM_FRAMES = 9
RESOLUTIONS = {"large": (256, 448), "small": (64, 96)}
REWARDS = (PoseConsistencyReward, EpipolarReward, ReprojectionReward, FeatureMatchingReward, PointCloudReward)
GUARDED = ("pose_consistency", "epipolar", "reprojection", "feature_matching")  # static pairs score exactly 0
MARGIN = 0.15
# A reversed orbit is rigid, and its depth-inverted scene fits the commanded cameras to first order (a lateral
# translation trades off against a yaw): feature matching never reads the commanded poses, and the three-view
# reprojection check needs more than 96 px of perspective to see it. The rewards that read the commanded
# rotation (pose, epipolar) and the point cloud do at both sizes.
BLIND_TO_REVERSED_ORBIT = {("feature_matching", "large"), ("feature_matching", "small"), ("reprojection", "small")}


class ObjectMotions:
    """Scores of the five geometric rewards on one scene with a pivot box, per (resolution, direction, variant)."""

    def __init__(self, seed: int):
        self.scene = make_scene(seed, pivot_depth=PIVOT_DEPTH)
        self._scores: dict[tuple[str, str], dict[str, tuple[dict[str, float], dict[str, bool]]]] = {}

    def scores(self, resolution: str, direction: str) -> dict[str, tuple[dict[str, float], dict[str, bool]]]:
        """variant -> (reward name -> value, reward name -> failed), scored in one batch."""
        if (resolution, direction) not in self._scores:
            height, width = RESOLUTIONS[resolution]
            K = default_intrinsics(height, width)
            trajectory = trajectory_preset(direction, NUM_FRAMES)
            video = render(self.scene, trajectory, K, height, width).frames
            variants = {"true": video, "frozen": video[:1].expand_as(video), "reversed": video.flip(0)}
            if direction == "orbit_left":  # the orbit's rotations about a standing camera
                rotating = make_pose(trajectory[:, :3, :3], torch.zeros(NUM_FRAMES, 3))
                variants["rotating"] = render(self.scene, rotating, K, height, width).frames
            cameras = Cameras.from_trajectory(trajectory, K, batch_size=len(variants))
            out = RewardSet([cls() for cls in REWARDS])(
                torch.stack(list(variants.values())), cameras, [""] * len(variants)
            )
            self._scores[resolution, direction] = {
                name: (
                    {reward: float(values[k]) for reward, values in out.rewards.items()},
                    {reward: bool(flags[k]) for reward, flags in out.failed.items()},
                )
                for k, name in enumerate(variants)
            }
        return self._scores[resolution, direction]


@pytest.fixture(scope="module")
def object_motions():
    return ObjectMotions(seed=3)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("direction", ["orbit_left", "dolly_in"])
@pytest.mark.parametrize("reward", [cls.name for cls in REWARDS])
def test_object_motion_ranks_above_frozen_reversed_and_rotating(object_motions, resolution, direction, reward):
    scores = object_motions.scores(resolution, direction)
    (good, failed), variants = scores["true"], {k: v for k, v in scores.items() if k != "true"}
    assert not failed[reward] and good[reward] > 0.25, (reward, good[reward])
    for name, (bad, bad_failed) in variants.items():
        if name == "reversed" and direction == "orbit_left" and (reward, resolution) in BLIND_TO_REVERSED_ORBIT:
            continue
        assert good[reward] > bad[reward] + MARGIN, f"{reward}: true {good[reward]:.3f} vs {name} {bad[reward]:.3f}"
        if name != "reversed":  # judged as not moving, not failed
            assert not bad_failed[reward] and (bad[reward] == 0.0 or reward not in GUARDED), (name, bad[reward])


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_a_video_the_guard_cannot_judge_is_flagged(resolution):
    height, width = RESOLUTIONS[resolution]
    gray = torch.full((1, NUM_FRAMES, 3, height, width), 0.5)
    cameras = Cameras.from_trajectory(trajectory_preset("orbit_left", NUM_FRAMES), default_intrinsics(height, width))
    for reward in (cls() for cls in REWARDS):
        out = reward(gray, cameras, [""])
        assert bool(out.failed[0]) and float(out.rewards[0]) == reward.floor, reward.name


def synthetic_pair(cam_from_world: torch.Tensor, depths: tuple[float, float], seed: int = 0):
    """Commanded pair (0, 1) and exact matches of random points at ``depths`` in front of camera 0, 640x480."""
    K = default_intrinsics(480, 640, fov_x_degrees=60.0).double()
    commanded = CommandedCameras(cam_from_world, K.expand(2, 3, 3), min_translation=1e-4)
    pair = commanded.pair(0, 1)
    rng = np.random.default_rng(seed)
    pixels = rng.uniform([0, 0], [640, 480], size=(400, 2))
    rays = np.concatenate([pixels, np.ones((400, 1))], axis=1) @ pair.K_i_inv.T
    points = rays * rng.uniform(*depths, size=(400, 1))
    projected = (points @ pair.R.T + pair.t) @ pair.K_j.T
    seen = (projected[:, 2] > 0) & (np.abs(projected[:, 0] / projected[:, 2] - 320) < 320)
    return pair, pixels[seen], projected[seen, :2] / projected[seen, 2:]


def relative_motion(axis_angle: list[float], center: list[float]) -> torch.Tensor:
    """``cam_from_world (2, 4, 4)``: frame 0 is the identity, frame 1 at ``center`` with the world-from-camera
    rotation ``axis_angle``."""
    rotation = axis_angle_to_matrix(torch.tensor(axis_angle, dtype=torch.float64))
    world_from_cam = make_pose(rotation, torch.tensor(center, dtype=torch.float64))
    return torch.stack([torch.eye(4, dtype=torch.float64), invert_pose(world_from_cam)])


ORBIT_STEP = math.radians(5)
RIGID_MOTIONS = {  # (cam_from_world (2, 4, 4), range of the scene's depths)
    # one step of orbit_left around the point 3 units ahead: moves left, yaws right to keep it centred
    "orbit": (
        relative_motion([0, ORBIT_STEP, 0], [-3 * math.sin(ORBIT_STEP), 0, 3 * (1 - math.cos(ORBIT_STEP))]),
        (2.0, 12.0),
    ),
    "dolly_to_near_object": (relative_motion([0, 0, 0], [0, 0, 0.2]), (0.8, 1.5)),
    "slow_in_deep_scene": (relative_motion([0, 0.002, 0], [0.03, 0, 0.04]), (5.0, 40.0)),  # 1/400 of the depth
    "sideways_and_tilt": (relative_motion([0.05, 0.02, 0.01], [0.3, -0.1, 0.05]), (1.0, 8.0)),
}


@pytest.mark.parametrize("motion", RIGID_MOTIONS)
def test_guard_tells_true_motion_from_frozen_and_rotating(motion):
    cam_from_world, depths = RIGID_MOTIONS[motion]
    pair, points_i, points_j = synthetic_pair(cam_from_world, depths)
    assert moves_as_commanded(pair, points_i, points_j, min_motion_px=0.4).moves
    assert not moves_as_commanded(pair, points_i, points_i, min_motion_px=0.4).moves  # frozen
    rotated = np.concatenate([points_i, np.ones((len(points_i), 1))], axis=1) @ (pair.K_j @ pair.R @ pair.K_i_inv).T
    rotating = moves_as_commanded(pair, points_i, rotated[:, :2] / rotated[:, 2:], min_motion_px=0.4)
    assert not rotating.moves and abs(rotating.parallax_px) < 1e-6


def test_guard_rejects_moving_against_the_command():
    pair, points_i, points_j = synthetic_pair(*RIGID_MOTIONS["dolly_to_near_object"])
    backwards = moves_as_commanded(pair, points_j, points_i, min_motion_px=0.4)  # the dolly played backwards
    assert not backwards.moves and backwards.parallax_px < 0


def test_guard_on_commanded_rotations_and_a_static_camera():
    turn = relative_motion([0, math.radians(3), 0], [0, 0, 0])
    pair, points_i, points_j = synthetic_pair(turn, (1.0, 10.0))
    assert moves_as_commanded(pair, points_i, points_j, 0.4).moves and math.isnan(
        moves_as_commanded(pair, points_i, points_j, 0.4).parallax_px
    )
    assert not moves_as_commanded(pair, points_i, points_i, 0.4).moves  # frozen
    assert not moves_as_commanded(pair, points_j, points_i, 0.4).moves  # turning the other way
    still, points, _ = synthetic_pair(relative_motion([0, 0, 0], [0, 0, 0]), (1.0, 10.0))
    assert moves_as_commanded(still, points, points, 0.4).moves  # a static command demands no motion
