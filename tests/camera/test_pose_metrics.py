import math

import pytest
import torch

from lyra_rl.camera import (
    invert_pose,
    make_pose,
    optimal_scale,
    pairwise_pose_errors,
    trajectory_errors,
    trajectory_preset,
    yaw_matrix,
)


class TestMetrics:
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
