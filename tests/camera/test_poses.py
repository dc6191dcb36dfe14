import math

import pytest
import torch

from lyra_rl.camera import (
    Cameras,
    axis_angle_to_matrix,
    default_intrinsics,
    matrix_to_axis_angle,
    resample_trajectory,
    rotation_angle,
    trajectory_preset,
    yaw_matrix,
)


class TestRotations:
    def test_rotation_angle_known_values(self):
        angles = torch.tensor([0.0, 0.3, math.pi / 2, math.pi - 1e-6], dtype=torch.float64)
        torch.testing.assert_close(rotation_angle(yaw_matrix(angles)), angles)

    @pytest.mark.parametrize("angle", [0.3, math.pi - 5e-4, math.pi - 1e-7])
    def test_axis_angle_round_trip(self, angle):
        axis = torch.tensor([0.6, -0.48, 0.64], dtype=torch.float64)
        rotation = axis_angle_to_matrix(axis * angle)
        torch.testing.assert_close(axis_angle_to_matrix(matrix_to_axis_angle(rotation)), rotation)

    def test_resample_midpoint_halves_rotation(self):
        traj = trajectory_preset("left", 2, angle_degrees=30)
        mid = resample_trajectory(traj, torch.tensor([0.5]))
        assert math.degrees(float(rotation_angle(mid[0, :3, :3]))) == pytest.approx(15.0, abs=1e-4)


class TestCameras:
    def test_bad_shapes_raise(self):
        with pytest.raises(ValueError, match="intrinsics"):
            Cameras(torch.eye(4).expand(1, 3, 4, 4), torch.eye(3).expand(1, 2, 3, 3))
        with pytest.raises(ValueError, match="NaN"):
            Cameras(torch.full((1, 2, 4, 4), math.nan), torch.eye(3).expand(1, 2, 3, 3))

    def test_indexing_keeps_the_batch_dimension(self):
        cams = Cameras.from_trajectory(trajectory_preset("left", 5), default_intrinsics(64, 96), batch_size=3)
        assert cams[1].batch_size == 1 and cams[-1].batch_size == 1 and cams[1:].batch_size == 2
