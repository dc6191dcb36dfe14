import math

import pytest
import torch

from lyra_rl.camera import (
    DIRECTIONS,
    PIVOT_DEPTH,
    PRESETS,
    camera_centers,
    get_trajectory,
    invert_pose,
    trajectory_preset,
)


def forward_axis(cam_from_world):
    """World direction of the camera's +z axis, (T, 3)."""
    return invert_pose(cam_from_world)[:, :3, 2]


class TestPresets:
    @pytest.mark.parametrize("direction", PRESETS)
    @pytest.mark.parametrize("num_frames", [2, 16, 81])
    def test_shape_and_identity_start(self, direction, num_frames):
        traj = trajectory_preset(direction, num_frames)
        assert traj.shape == (num_frames, 4, 4)
        torch.testing.assert_close(traj[0], torch.eye(4))
        torch.testing.assert_close(
            traj[:, :3, :3] @ traj[:, :3, :3].transpose(1, 2), torch.eye(3).expand(num_frames, 3, 3), atol=1e-6, rtol=0
        )

    def test_forward_moves_along_plus_z(self):
        centers = camera_centers(trajectory_preset("forward", 16, distance=1.5))
        torch.testing.assert_close(centers[-1], torch.tensor([0.0, 0.0, 1.5]), atol=1e-6, rtol=0)
        assert (centers[1:, 2] > centers[:-1, 2]).all()

    def test_left_yaws_left_in_place(self):
        traj = trajectory_preset("left", 16, angle_degrees=40)
        assert camera_centers(traj).abs().max() < 1e-6
        heading = forward_axis(traj)[-1]
        assert heading[0] < 0  # looks towards -x: left in OpenCV axes
        assert math.isclose(math.degrees(math.atan2(-heading[0], heading[2])), 40, abs_tol=1e-4)

    def test_right_mirrors_left(self):
        left, right = trajectory_preset("left", 9), trajectory_preset("right", 9)
        assert forward_axis(right)[-1, 0] > 0
        torch.testing.assert_close(forward_axis(left)[:, 0], -forward_axis(right)[:, 0])

    @pytest.mark.parametrize("direction, side", [("forward_left", -1), ("forward_right", 1)])
    def test_arcs_turn_and_drift_to_their_side(self, direction, side):
        traj = trajectory_preset(direction, 16)
        centers = camera_centers(traj)
        assert centers[-1, 2] > 1.0
        assert torch.sign(centers[-1, 0]) == side
        assert torch.sign(forward_axis(traj)[-1, 0]) == side

    def test_s_curve_changes_lane_and_recovers_heading(self):
        traj = trajectory_preset("s_curve", 33, angle_degrees=40)
        centers, heading = camera_centers(traj), forward_axis(traj)
        assert centers[-1, 0] < -0.05 and centers[-1, 2] > 1.0
        torch.testing.assert_close(heading[-1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
        assert heading[16, 0] < -0.3  # heading swung left at the middle

    def test_left_right_sweeps_and_returns(self):
        traj = trajectory_preset("left_right", 17, angle_degrees=40)
        yaw = torch.rad2deg(torch.atan2(-forward_axis(traj)[:, 0], forward_axis(traj)[:, 2]))
        assert math.isclose(float(yaw[8]), 20.0, abs_tol=1e-4)
        assert abs(float(yaw[-1])) < 1e-4
        assert camera_centers(traj).abs().max() < 1e-6

    @pytest.mark.parametrize("direction, side", [("orbit_left", -1), ("orbit_right", 1)])
    def test_orbits_circle_the_pivot_keeping_it_centred(self, direction, side):
        traj = trajectory_preset(direction, 17, angle_degrees=40)
        pivot = torch.tensor([0.0, 0.0, PIVOT_DEPTH, 1.0])
        in_camera = traj @ pivot  # (T, 4): the pivot in every camera frame
        torch.testing.assert_close(in_camera[:, :2], torch.zeros(17, 2), atol=1e-5, rtol=0)  # on the optical axis
        torch.testing.assert_close(in_camera[:, 2], torch.full((17,), PIVOT_DEPTH), atol=1e-5, rtol=0)
        centers = camera_centers(traj)
        assert (torch.sign(centers[1:, 0]) == side).all() and centers[:, 1].abs().max() < 1e-6
        assert (side * centers[1:, 0] > side * centers[:-1, 0]).all()  # moves steadily to its side
        heading = forward_axis(traj)[-1]
        assert math.isclose(math.degrees(math.atan2(heading[0], heading[2])), -side * 40, abs_tol=1e-4)  # turns back

    def test_dolly_in_moves_halfway_to_the_pivot_along_the_view_axis(self):
        traj = trajectory_preset("dolly_in", 9, pivot_depth=2.0)
        centers = camera_centers(traj)
        torch.testing.assert_close(centers[-1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
        assert (centers[1:, 2] > centers[:-1, 2]).all() and centers[:, :2].abs().max() < 1e-6
        torch.testing.assert_close(forward_axis(traj), torch.tensor([0.0, 0.0, 1.0]).expand(9, 3), atol=1e-6, rtol=0)

    @pytest.mark.parametrize("direction, up", [("tilt_up", 1), ("tilt_down", -1)])
    def test_tilts_pitch_in_place(self, direction, up):
        traj = trajectory_preset(direction, 9, angle_degrees=30)
        heading = forward_axis(traj)
        assert camera_centers(traj).abs().max() < 1e-6 and heading[:, 0].abs().max() < 1e-6
        pitch = torch.rad2deg(torch.atan2(-heading[:, 1], heading[:, 2]))  # positive: looking up (-y)
        torch.testing.assert_close(pitch, up * torch.linspace(0, 30, 9), atol=1e-4, rtol=0)

    def test_dolly_out_backs_away_from_the_pivot(self):
        traj = trajectory_preset("dolly_out", 9, pivot_depth=2.0)
        centers = camera_centers(traj)
        torch.testing.assert_close(centers[-1], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
        assert (centers[1:, 2] < centers[:-1, 2]).all()
        torch.testing.assert_close(forward_axis(traj), torch.tensor([0.0, 0.0, 1.0]).expand(9, 3), atol=1e-6, rtol=0)

    @pytest.mark.parametrize("direction, up", [("translate_up", 1), ("translate_down", -1)])
    def test_vertical_translations_keep_the_pivot_centred(self, direction, up):
        traj = trajectory_preset(direction, 9, angle_degrees=40)
        in_camera = traj @ torch.tensor([0.0, 0.0, PIVOT_DEPTH, 1.0])
        torch.testing.assert_close(in_camera[:, :2], torch.zeros(9, 2), atol=1e-5, rtol=0)
        centers, heading = camera_centers(traj), forward_axis(traj)
        assert (up * -centers[1:, 1] > up * -centers[:-1, 1]).all()  # rises (or sinks) steadily: -y is up
        assert centers[:, [0, 2]].abs().max() < 1e-6
        rise = PIVOT_DEPTH * math.tan(math.radians(20))
        assert math.isclose(float(-centers[-1, 1]), up * rise, rel_tol=1e-5)
        assert math.isclose(math.degrees(math.atan2(-heading[-1, 1], heading[-1, 2])), -up * 20, abs_tol=1e-4)

    def test_static_does_not_move(self):
        torch.testing.assert_close(trajectory_preset("static", 9), torch.eye(4).expand(9, 4, 4))

    @pytest.mark.parametrize("direction", [d for d in PRESETS if d not in DIRECTIONS])
    def test_new_presets_are_usable_by_name(self, direction):
        torch.testing.assert_close(get_trajectory(direction, 5), trajectory_preset(direction, 5))

    def test_unknown_direction_lists_known_ones(self):
        with pytest.raises(ValueError, match="forward_left.*orbit_left.*static"):
            trajectory_preset("backwards", 8)
