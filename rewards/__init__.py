"""Built-in reward plugins of lyra-rl (registered through the ``lyra_rl.rewards`` entry points)."""

from .epipolar import EpipolarReward
from .matching import FeatureMatchingReward
from .perceptual import PerceptualReward
from .point_cloud import PointCloudReward
from .pose import PoseConsistencyReward
from .reprojection import ReprojectionReward

__all__ = [
    "EpipolarReward",
    "FeatureMatchingReward",
    "PerceptualReward",
    "PointCloudReward",
    "PoseConsistencyReward",
    "ReprojectionReward",
]
