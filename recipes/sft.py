"""Action-conditioned SFT of the camera-conditioned Wan policy: flow matching on procedural videos rendered
along their commanded cameras (whole DiT, LoRA or camera modules: whatever the policy config trains).

    accelerate launch recipes/sft.py --config recipes/configs/sft_tiny.yaml [--max_steps 500 --resume true ...]
    python recipes/sft.py --config recipes/configs/sft_tiny.yaml       # one process
"""

from __future__ import annotations

from trl import TrlParser

from lyra_rl.training import RewardConfig, SFTConfig, SFTTrainer, make_accelerator
from policies import PolicyConfig, WanCameraPolicy, build_policy


def parse_args(args: list[str] | None = None) -> tuple[PolicyConfig, RewardConfig, SFTConfig]:
    """The three configs from ``--config FILE`` and the command line, checked against the policy's sizes;
    ``--rewards`` (none: ``--rewards []`` in YAML) score the held-out samples."""
    policy_config, reward_config, config = TrlParser((PolicyConfig, RewardConfig, SFTConfig)).parse_args_and_config(args)
    WanCameraPolicy.check_video_size(config.num_frames, config.height, config.width)
    return policy_config, reward_config, config


def main(policy_config: PolicyConfig, reward_config: RewardConfig, config: SFTConfig) -> list[dict[str, float]]:
    accelerator = make_accelerator(config.mixed_precision)
    policy = build_policy(policy_config, config.seed, accelerator)
    reward_set = reward_config.reward_set() if reward_config.rewards else None
    history = SFTTrainer(config, policy, reward_set, accelerator).train()
    if reward_set is not None:
        reward_set.close()
    accelerator.end_training()  # destroys the process group (gloo can abort at exit otherwise)
    return history


if __name__ == "__main__":
    main(*parse_args())
