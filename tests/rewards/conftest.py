import pytest
import torch

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from lyra_rl.data.renderer import render
from lyra_rl.data.scenes import make_scene


class Rendered:
    """A scene rendered along presets at one resolution, with the commanded cameras."""

    def __init__(self, seed: int, height: int, width: int, num_frames: int = 12):
        self.scene = make_scene(seed)
        self.height, self.width, self.num_frames = height, width, num_frames
        self.K = default_intrinsics(height, width)
        self._videos: dict[str, torch.Tensor] = {}

    def video(self, direction: str) -> torch.Tensor:
        if direction not in self._videos:
            traj = trajectory_preset(direction, self.num_frames)
            self._videos[direction] = render(self.scene, traj, self.K, self.height, self.width).frames
        return self._videos[direction]

    def cameras(self, direction: str, batch_size: int = 1) -> Cameras:
        return Cameras.from_trajectory(trajectory_preset(direction, self.num_frames), self.K, batch_size)


@pytest.fixture(scope="session")
def small():
    """64x96 clips: the dense-flow path."""
    return Rendered(seed=7, height=64, width=96)


@pytest.fixture(scope="session")
def large():
    """192x320 clips: the SIFT path."""
    return Rendered(seed=3, height=192, width=320)
