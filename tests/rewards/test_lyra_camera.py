"""Lyra's camera reward: its formula on known trajectories, a pluggable estimator, and the ranking it gives
procedural videos."""

import math

import pytest
import torch

from lyra_rl.camera import compose_poses, lyra_camera_score, make_pose, trajectory_preset, yaw_matrix
from rewards.lyra_camera import LyraCameraReward


def yawed(trajectory: torch.Tensor, degrees_per_frame: float) -> torch.Tensor:
    """The trajectory with an extra yaw growing by ``degrees_per_frame`` each frame (a drifting camera)."""
    drift = torch.stack(
        [
            make_pose(yaw_matrix(torch.tensor(math.radians(degrees_per_frame * k))), torch.zeros(3))
            for k in range(len(trajectory))
        ]
    )
    return compose_poses(trajectory, drift.to(trajectory))


def test_the_formula_on_known_trajectories():
    forward, left = trajectory_preset("forward", 17), trajectory_preset("left", 17)
    assert lyra_camera_score(forward, forward).score == pytest.approx(1.0, abs=1e-6)
    assert lyra_camera_score(forward, forward).rotation_weight == 0.3  # the command does not rotate
    assert lyra_camera_score(left, left).rotation_weight == 0.7
    drifted = yawed(left, 0.5)  # frames 0, 4, 8, 12, 16 scored: 0, 2, 4, 6, 8 degrees off
    result = lyra_camera_score(drifted, left)
    assert result.rot_err_deg == pytest.approx(4.0, abs=1e-3) and result.trans_err == pytest.approx(0.0, abs=1e-6)
    assert result.score == pytest.approx(0.7 * math.exp(-1.0) + 0.3, abs=1e-4)
    scaled = forward.clone()
    scaled[:, :3, 3] *= 3.0  # monocular scale is fitted away
    assert lyra_camera_score(scaled, forward).score == pytest.approx(1.0, abs=1e-6)
    reversed_command = lyra_camera_score(trajectory_preset("right", 17), left)  # 40 degrees off, no translation
    assert reversed_command.score == pytest.approx(0.7 * math.exp(-0.25 * 40) + 0.3, abs=1e-4)


class Commanded:
    """An estimator that returns the commanded path (a perfect learned one), or nothing."""

    def __init__(self, finds: bool = True):
        self.finds = finds

    def estimate_trajectory(self, video, cam_from_world, intrinsics):
        return cam_from_world.clone() if self.finds else None


def test_a_plugged_in_estimator_replaces_the_classical_one(small):
    video, cameras = small.video("left")[None], small.cameras("left")
    out = LyraCameraReward(estimator=Commanded())(video, cameras, ["a room"])
    assert float(out.rewards[0]) == pytest.approx(1.0, abs=1e-6) and not bool(out.failed[0])
    out = LyraCameraReward(estimator=Commanded(finds=False))(video, cameras, ["a room"])
    assert float(out.rewards[0]) == 0.0 and bool(out.failed[0])
    with pytest.raises(TypeError, match="estimate_trajectory"):
        LyraCameraReward(estimator=object())


@pytest.mark.parametrize("direction, wrong", [("left", "right"), ("forward_left", "forward_right")])
def test_the_true_command_scores_above_a_wrong_one_and_a_frozen_video(small, direction, wrong):
    reward = LyraCameraReward()
    video = small.video(direction)
    frozen = video[:1].expand_as(video)
    batch = torch.stack([video, video, frozen])
    cameras = small.cameras(direction, 3)
    cameras.cam_from_world[1] = small.cameras(wrong).cam_from_world[0]
    out = reward(batch, cameras, ["a room"] * 3)
    true, reversed_command, still = out.rewards.tolist()
    assert not bool(out.failed[0])
    assert true > 0.5 and true > reversed_command + 0.3 and true > still + 0.3, out.rewards
