"""Cameras: SE(3) poses, intrinsics, trajectory presets, file converters and pose-error metrics.

``poses`` holds the SE(3) algebra, intrinsics and the :class:`Cameras` batch; ``trajectories`` the
presets; ``converters`` the trajectory file formats; ``metrics`` the pose errors. Every public
name is re-exported here, so ``from lyra_rl.camera import Cameras, trajectory_preset`` is the way in.

Convention (the only one in lyra-rl; other conventions are converted at the edges):
    - OpenCV camera axes: x right, y down, z forward.
    - Extrinsics are ``cam_from_world`` 4x4 matrices, ``X_cam = R @ X_world + t``.
    - Intrinsics ``K`` are 3x3 in pixels; the center of the top-left pixel is ``(u, v) = (0, 0)``.
    - Trajectories are relative to their first frame: ``cam_from_world[0]`` is the identity, so the
      world frame is the camera of frame 0.
    - Yaw is a rotation about the camera's y axis; *positive yaw turns the camera left* (the forward
      axis swings towards -x), as in the seed's ``left`` preset.
    - Angles are in radians unless a name or docstring says degrees.
"""

from .converters import from_multicam_extrinsics, from_realestate10k, load_trajectory, opengl_to_opencv
from .metrics import (
    LyraCameraScore,
    TrajectoryErrors,
    lyra_camera_score,
    optimal_scale,
    pairwise_pose_errors,
    trajectory_errors,
)
from .poses import (
    Cameras,
    axis_angle_to_matrix,
    camera_centers,
    compose_poses,
    default_intrinsics,
    invert_pose,
    make_pose,
    matrix_to_axis_angle,
    pinhole_intrinsics,
    relative_pose,
    relative_to_first,
    resample_trajectory,
    rotation_angle,
    skew,
    trajectory_problem,
    yaw_matrix,
)
from .trajectories import (
    DIRECTIONS,
    OBJECT_PRESETS,
    PIVOT_DEPTH,
    PRESETS,
    get_trajectory,
    random_trajectory,
    trajectory_preset,
)

__all__ = [
    "LyraCameraScore",
    "lyra_camera_score",
    "DIRECTIONS",
    "OBJECT_PRESETS",
    "PIVOT_DEPTH",
    "PRESETS",
    "Cameras",
    "TrajectoryErrors",
    "axis_angle_to_matrix",
    "camera_centers",
    "compose_poses",
    "default_intrinsics",
    "from_multicam_extrinsics",
    "from_realestate10k",
    "get_trajectory",
    "invert_pose",
    "load_trajectory",
    "make_pose",
    "matrix_to_axis_angle",
    "opengl_to_opencv",
    "pinhole_intrinsics",
    "optimal_scale",
    "pairwise_pose_errors",
    "random_trajectory",
    "relative_pose",
    "relative_to_first",
    "resample_trajectory",
    "rotation_angle",
    "skew",
    "trajectory_errors",
    "trajectory_preset",
    "trajectory_problem",
    "yaw_matrix",
]
