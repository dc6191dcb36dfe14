"""Training: the machinery every trainer shares (:class:`Trainer`) and each algorithm's step."""

from .checkpoint import latest_checkpoint
from .config import RewardConfig, TrainingConfig, learning_rate_factor, weight_dtype
from .distributed import make_accelerator
from .dpo import DPOConfig, DPOTrainer
from .grpo import GRPOConfig, GRPOTrainer
from .nft import NFTConfig, NFTTrainer
from .sft import SFTConfig, SFTTrainer
from .trainer import Trainer

__all__ = [
    "DPOConfig",
    "DPOTrainer",
    "GRPOConfig",
    "GRPOTrainer",
    "NFTConfig",
    "NFTTrainer",
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
