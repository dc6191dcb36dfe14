"""The fidelity benchmark's building blocks: the camera families its clips cycle through, graded command
perturbations, and the rewards' slope along them."""

import math

import pytest
import torch

from lyra_rl.camera import camera_centers, invert_pose, rotation_angle, trajectory_preset
from lyra_rl.fidelity import (
    FAMILIES,
    PERTURBATIONS,
    graded_scores,
    graded_summary,
    perturbed_command,
    procedural_clips,
    spearman,
)
from rewards import EpipolarReward, PoseConsistencyReward


def generator():
    return torch.Generator().manual_seed(0)


def test_rotation_drift_turns_each_camera_in_place_up_to_the_amount():
    command = trajectory_preset("forward_left", 9)
    drifted = perturbed_command(command, "rotation_drift", 4.0, generator())
    torch.testing.assert_close(camera_centers(drifted), camera_centers(command), atol=1e-5, rtol=0)
    turn = invert_pose(drifted.double())[:, :3, :3] @ invert_pose(command.double())[:, :3, :3].transpose(-1, -2)
    torch.testing.assert_close(
        torch.rad2deg(rotation_angle(turn)), torch.linspace(0, 4, 9).double(), atol=1e-4, rtol=0
    )


def test_translation_direction_turns_the_path_by_the_amount():
    command = trajectory_preset("forward", 9)
    turned = perturbed_command(command, "translation_direction", 30.0, generator())
    end, turned_end = camera_centers(command)[-1].double(), camera_centers(turned)[-1].double()
    cosine = float(end @ turned_end / (end.norm() * turned_end.norm()))
    assert math.isclose(math.degrees(math.acos(cosine)), 30.0, abs_tol=1e-3)
    assert math.isclose(float(turned_end.norm()), float(end.norm()), rel_tol=1e-5)
    assert perturbed_command(trajectory_preset("left", 9), "translation_direction", 30.0, generator()) is None


@pytest.mark.parametrize("factor", [0.5, 2.0, -1.0])
def test_speed_scales_rotations_and_centers_and_minus_one_reverses(factor):
    command = trajectory_preset("forward_right", 9)
    kind = "reversed" if factor < 0 else "speed"
    scaled = perturbed_command(command, kind, factor, generator())
    torch.testing.assert_close(camera_centers(scaled), factor * camera_centers(command), atol=1e-5, rtol=0)
    yaw = torch.rad2deg(rotation_angle(invert_pose(command.double())[:, :3, :3]))
    torch.testing.assert_close(
        torch.rad2deg(rotation_angle(scaled.double()[:, :3, :3])), abs(factor) * yaw, atol=1e-3, rtol=0
    )


def test_spearman_matches_known_rankings():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert spearman(x, torch.ones(4)) != spearman(x, torch.ones(4))  # constant: NaN


def test_families_cover_every_moving_preset():
    assert "static" not in FAMILIES and {"tilt_up", "orbit_left", "dolly_out", "translate_up"} <= set(FAMILIES)


def test_pose_and_epipolar_fall_as_the_command_drifts_from_the_true_video():
    """Graded, not just a detector: the reward keeps falling between a nearly right and a more wrong command."""
    clip, _ = procedural_clips(1003, 64, 96, num_frames=9, direction="forward_left")
    scores = graded_scores([PoseConsistencyReward(), EpipolarReward()], clip)
    assert set(scores) == {"true", *PERTURBATIONS}
    for name in ("pose_consistency", "epipolar"):
        drift = [scores["true"][0.0][name]] + [scores["rotation_drift"][a][name] for a in (1.0, 4.0, 8.0)]
        assert all(a > b for a, b in zip(drift, drift[1:])), (name, drift)
        summary = graded_summary([scores])[name]
        assert summary["rotation_drift"]["spearman"] > 0.9 and summary["translation_direction"]["spearman"] > 0.9
        assert summary["reversed"]["auc"][-1.0] == 1.0
