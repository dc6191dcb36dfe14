"""GRPO fine-tuning of the camera-conditioned Wan policy's LoRA adapters, scored by the 3D reward suite.

    accelerate launch recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--max_steps 50 ...]
    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml       # one process
"""

from __future__ import annotations

from trl import TrlParser

from lyra_rl.training import GRPOConfig, GRPOTrainer, RewardConfig, make_accelerator
from policies import PolicyConfig, WanCameraPolicy, build_policy


def parse_args(args: list[str] | None = None) -> tuple[PolicyConfig, RewardConfig, GRPOConfig]:
    """The three configs from ``--config FILE`` and the command line, checked against the policy's sizes."""
    policy_config, reward_config, config = TrlParser((PolicyConfig, RewardConfig, GRPOConfig)).parse_args_and_config(args)
    WanCameraPolicy.check_video_size(config.num_frames, config.height, config.width)
    return policy_config, reward_config, config


def main(policy_config: PolicyConfig, reward_config: RewardConfig, config: GRPOConfig) -> list[dict[str, float]]:
    accelerator = make_accelerator(config.mixed_precision)
    policy = build_policy(policy_config, config.seed, accelerator)
    with reward_config.reward_set() as reward_set:
        history = GRPOTrainer(config, policy, reward_set, accelerator).train()
    accelerator.end_training()  # destroys the process group (gloo can abort at exit otherwise)
    return history


if __name__ == "__main__":
    main(*parse_args())
