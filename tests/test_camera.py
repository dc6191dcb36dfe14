import json
import math

import pytest
import torch

from lyra_rl import camera
from lyra_rl.camera import (
    DIRECTIONS,
    Cameras,
    camera_centers,
    invert_pose,
    make_pose,
    optimal_scale,
    pairwise_pose_errors,
    rotation_angle,
    trajectory_errors,
    trajectory_preset,
    yaw_matrix,
)


def forward_axis(cam_from_world):
    """World direction of the camera's +z axis, (T, 3)."""
    return invert_pose(cam_from_world)[:, :3, 2]


class TestPresets:
    @pytest.mark.parametrize("direction", DIRECTIONS)
    @pytest.mark.parametrize("num_frames", [2, 16, 81])
    def test_shape_and_identity_start(self, direction, num_frames):
        traj = trajectory_preset(direction, num_frames)
        assert traj.shape == (num_frames, 4, 4)
        torch.testing.assert_close(traj[0], torch.eye(4))
        torch.testing.assert_close(traj[:, :3, :3] @ traj[:, :3, :3].transpose(1, 2), torch.eye(3).expand(num_frames, 3, 3), atol=1e-6, rtol=0)

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

    def test_unknown_direction_lists_known_ones(self):
        with pytest.raises(ValueError, match="forward_left"):
            trajectory_preset("backwards", 8)


class TestMetrics:
    def test_rotation_angle_known_values(self):
        angles = torch.tensor([0.0, 0.3, math.pi / 2, math.pi - 1e-6], dtype=torch.float64)
        torch.testing.assert_close(rotation_angle(yaw_matrix(angles)), angles)

    def test_pairwise_errors_hand_values(self):
        ref = make_pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        est = make_pose(yaw_matrix(math.radians(3.0)), torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
        rot, trans = pairwise_pose_errors(est, ref)
        assert math.isclose(float(rot), 3.0, abs_tol=1e-9)
        assert math.isclose(float(trans), 45.0, abs_tol=1e-9)

    def test_identical_trajectories_have_zero_error(self):
        traj = trajectory_preset("forward_left", 16)
        errors = trajectory_errors(traj, traj)
        assert errors.rot_err < 1e-5 and errors.trans_err < 1e-5 and errors.cam_mc < 1e-5
        assert errors.camera_control == pytest.approx(1.0)

    def test_cami2v_sums_and_worldscore_averages(self):
        # Reference: 3 frames moving forward 1 and 2 units. Estimate: frame 2 yawed by 0.1 rad, and
        # translations doubled (self-normalisation and the fitted scale must remove the doubling).
        ref = trajectory_preset("forward", 3, distance=2.0).double()
        est_c2w = invert_pose(ref).clone()
        est_c2w[:, :3, 3] *= 2
        est_c2w[2, :3, :3] = est_c2w[2, :3, :3] @ yaw_matrix(0.1)
        errors = trajectory_errors(invert_pose(est_c2w), ref)
        assert errors.rot_err == pytest.approx(0.1, abs=1e-9)  # radians, summed over frames
        assert errors.rot_err_deg == pytest.approx(math.degrees(0.1) / 3, abs=1e-7)  # degrees, averaged
        assert errors.trans_err == pytest.approx(0.0, abs=1e-9)
        assert errors.trans_err_scaled == pytest.approx(0.0, abs=1e-6)
        # CamMC: Frobenius norm of the rotation difference of frame 2 = 2*sqrt(2)*sin(0.1/2)*... = |R - I|_F
        expected_mc = float(torch.linalg.norm(yaw_matrix(0.1) - torch.eye(3, dtype=torch.float64)))
        assert errors.cam_mc == pytest.approx(expected_mc, abs=1e-9)

    def test_optimal_scale_recovers_factor(self):
        est = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert optimal_scale(est, 2.5 * est) == pytest.approx(2.5, rel=1e-6)


class TestConverters:
    def test_opengl_identity_becomes_flipped_axes(self):
        cv = camera.opengl_to_opencv(torch.eye(4, dtype=torch.float64))
        torch.testing.assert_close(cv, torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))

    def test_multicam_moving_forward(self):
        # Unreal: x forward, y right, z up, centimetres, row-vector matrices (translation in the last row).
        frames = {f"frame{k}": {"cam01": f"[1 0 0 0] [0 1 0 0] [0 0 1 0] [{100.0 * k} 0 0 1]"} for k in range(3)}
        traj = camera.from_multicam_extrinsics(frames, "cam01")
        torch.testing.assert_close(camera_centers(traj)[2], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6, rtol=0)

    def test_realestate10k_line(self):
        line = "0 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 -2"
        traj, K = camera.from_realestate10k(["https://youtube", line, line], height=100, width=200)
        torch.testing.assert_close(K[0], torch.tensor([[100.0, 0, 100], [0, 80, 50], [0, 0, 1]]))
        torch.testing.assert_close(traj[1], torch.eye(4))

    def test_load_json_and_resample(self, tmp_path):
        traj = trajectory_preset("forward_right", 8)
        path = tmp_path / "traj.json"
        path.write_text(json.dumps({"cam_from_world": traj.tolist()}))
        torch.testing.assert_close(camera.load_trajectory(path), traj, atol=1e-6, rtol=0)
        dense = camera.load_trajectory(path, num_frames=15)  # every second frame is an original one
        torch.testing.assert_close(dense[::2], traj, atol=1e-5, rtol=0)
        assert camera.get_trajectory(str(path), 8).shape == (8, 4, 4)

    @pytest.mark.parametrize("angle", [0.3, math.pi - 5e-4, math.pi - 1e-7])
    def test_axis_angle_round_trip(self, angle):
        axis = torch.tensor([0.6, -0.48, 0.64], dtype=torch.float64)
        rotation = camera.axis_angle_to_matrix(axis * angle)
        torch.testing.assert_close(camera.axis_angle_to_matrix(camera.matrix_to_axis_angle(rotation)), rotation)

    def test_resample_midpoint_halves_rotation(self):
        traj = trajectory_preset("left", 2, angle_degrees=30)
        mid = camera.resample_trajectory(traj, torch.tensor([0.5]))
        assert math.degrees(float(rotation_angle(mid[0, :3, :3]))) == pytest.approx(15.0, abs=1e-4)


class TestCameras:
    def test_bad_shapes_raise(self):
        with pytest.raises(ValueError, match="intrinsics"):
            Cameras(torch.eye(4).expand(1, 3, 4, 4), torch.eye(3).expand(1, 2, 3, 3))
        with pytest.raises(ValueError, match="NaN"):
            Cameras(torch.full((1, 2, 4, 4), math.nan), torch.eye(3).expand(1, 2, 3, 3))

    def test_indexing_keeps_the_batch_dimension(self):
        cams = Cameras.from_trajectory(trajectory_preset("left", 5), camera.default_intrinsics(64, 96), batch_size=3)
        assert cams[1].batch_size == 1 and cams[-1].batch_size == 1 and cams[1:].batch_size == 2
