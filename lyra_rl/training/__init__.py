"""Training: the machinery every trainer shares (:class:`Trainer`) and each algorithm's step."""

from .checkpoint import latest_checkpoint
from .config import RewardConfig, TrainingConfig, learning_rate_factor, weight_dtype
from .distributed import make_accelerator
from .grpo import GRPOConfig, GRPOTrainer
from .sft import SFTConfig, SFTTrainer
from .trainer import Trainer

__all__ = [
    "GRPOConfig",
    "GRPOTrainer",
    "RewardConfig",
    "SFTConfig",
    "SFTTrainer",
    "Trainer",
    "TrainingConfig",
    "latest_checkpoint",
    "learning_rate_factor",
    "make_accelerator",
    "weight_dtype",
]
