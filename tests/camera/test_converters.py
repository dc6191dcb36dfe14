import json

import pytest
import torch

from lyra_rl.camera import (
    camera_centers,
    from_multicam_extrinsics,
    from_realestate10k,
    get_trajectory,
    load_trajectory,
    opengl_to_opencv,
    trajectory_preset,
)
from lyra_rl.errors import TrajectoryError


class TestConverters:
    def test_opengl_identity_becomes_flipped_axes(self):
        cv = opengl_to_opencv(torch.eye(4, dtype=torch.float64))
        torch.testing.assert_close(cv, torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))

    def test_multicam_moving_forward(self):
        # Unreal: x forward, y right, z up, centimetres, row-vector matrices (translation in the last row).
        frames = {f"frame{k}": {"cam01": f"[1 0 0 0] [0 1 0 0] [0 0 1 0] [{100.0 * k} 0 0 1]"} for k in range(3)}
        traj = from_multicam_extrinsics(frames, "cam01")
        torch.testing.assert_close(camera_centers(traj)[2], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6, rtol=0)

    def test_realestate10k_line(self):
        line = "0 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 -2"
        traj, K = from_realestate10k(["https://youtube", line, line], height=100, width=200)
        torch.testing.assert_close(K[0], torch.tensor([[100.0, 0, 100], [0, 80, 50], [0, 0, 1]]))
        torch.testing.assert_close(traj[1], torch.eye(4))

    def test_load_json_and_resample(self, tmp_path):
        traj = trajectory_preset("forward_right", 8)
        path = tmp_path / "traj.json"
        path.write_text(json.dumps({"cam_from_world": traj.tolist()}))
        torch.testing.assert_close(load_trajectory(path), traj, atol=1e-6, rtol=0)
        dense = load_trajectory(path, num_frames=15, resample=True)  # every second frame is an original one
        torch.testing.assert_close(dense[::2], traj, atol=1e-5, rtol=0)
        assert get_trajectory(str(path), 8).shape == (8, 4, 4)
        with pytest.raises(TrajectoryError, match="has 8 poses for 15 frames and resampling was not asked for"):
            load_trajectory(path, num_frames=15)

    @pytest.mark.parametrize(
        "change, problem",
        [
            (lambda t: t[:1], "needs at least 2 poses of shape (4, 4), got shape (1, 4, 4)"),
            (lambda t: t.index_fill(0, torch.tensor([3]), float("nan")), "pose 3 is not finite"),
            (lambda t: t * torch.tensor([1.0, 1.0, 2.0, 1.0])[:, None], "pose 0 is not rigid (its rotation or last"),
            (lambda t: t @ torch.diag(torch.tensor([-1.0, 1, 1, 1])), "pose 0 is not rigid"),  # a reflection
        ],
    )
    def test_a_trajectory_that_is_no_camera_path_is_named(self, tmp_path, change, problem):
        path = tmp_path / "traj.json"
        path.write_text(json.dumps({"cam_from_world": change(trajectory_preset("left", 8)).tolist()}))
        with pytest.raises(TrajectoryError) as raised:
            load_trajectory(path)
        assert str(raised.value).startswith(f"trajectory {path} {problem}")
