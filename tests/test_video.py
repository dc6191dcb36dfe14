import pytest
import torch

from lyra_rl.camera import get_trajectory
from lyra_rl.video import camera_path_video, read_video, write_video


def test_camera_path_video_draws_the_paths_beside_the_frames(tmp_path):
    video = torch.rand(9, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    paths = {"commanded": get_trajectory("forward_left", 9), "estimated": get_trajectory("forward_right", 9)}
    panel = camera_path_video(video, paths, min_height=96)
    assert panel.shape == (9, 3, 96, 144 + 96)
    torch.testing.assert_close(panel[0, :, ::3, :144:3], video[0])  # the frame, upscaled 3x (nearest)
    side = panel[:, :, :, 144:]
    assert (side[0] - side[-1]).abs().amax() > 0.1  # the current-camera markers move
    decoded, _ = read_video(write_video(tmp_path / "sample.mp4", panel))
    assert decoded.shape == panel.shape


def test_camera_path_video_checks_path_lengths():
    with pytest.raises(ValueError, match="commanded"):
        camera_path_video(torch.rand(9, 3, 16, 16), {"commanded": get_trajectory("forward", 5)})


def test_camera_path_video_shows_rotations_in_place():
    """A camera that only turns (preset left) keeps its center: its heading, drawn each frame, still moves."""
    panel = camera_path_video(torch.rand(5, 3, 16, 16), {"commanded": get_trajectory("left", 5)}, min_height=96)
    assert (panel[0, :, :, 96:] - panel[-1, :, :, 96:]).abs().amax() > 0.1
