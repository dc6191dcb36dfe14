"""Concrete lyra-rl policies: the camera-conditioned Wan2.1 DiT and its loaders."""

from .config import PolicyConfig, build_policy
from .wan_camera import WanCameraPolicy

__all__ = ["PolicyConfig", "WanCameraPolicy", "build_policy"]
