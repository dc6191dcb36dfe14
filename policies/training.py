"""What every training recipe does with the camera-conditioned Wan policy: parse its configs (the video size
checked against the policy's rule before anything is built), then build the policy and the reward set and
run a trainer under the launch's accelerator."""

from __future__ import annotations

from trl import TrlParser

from lyra_rl.training import RewardConfig, Trainer, TrainingConfig, make_accelerator

from .config import PolicyConfig, build_policy
from .wan_camera import WanCameraPolicy


def parse_configs(
    config_class: type[TrainingConfig], args: list[str] | None = None
) -> tuple[PolicyConfig, RewardConfig, TrainingConfig]:
    """``PolicyConfig``, ``RewardConfig`` and ``config_class`` from ``--config FILE`` and the command line
    (``args``, default ``sys.argv``), parsed by one ``trl.TrlParser``."""
    policy_config, reward_config, config = TrlParser((PolicyConfig, RewardConfig, config_class)).parse_args_and_config(
        args
    )
    WanCameraPolicy.check_video_size(config.num_frames, config.height, config.width, policy_config.policy)
    return policy_config, reward_config, config


def run_training(
    trainer_class: type[Trainer], policy_config: PolicyConfig, reward_config: RewardConfig, config: TrainingConfig
) -> list[dict[str, float]]:
    """Builds the policy and the reward set (none for ``rewards: []``) and trains; returns the logged history."""
    if trainer_class.needs_rewards and not reward_config.rewards:  # before anything is built
        raise ValueError(
            f"{trainer_class.name} needs rewards to rank its rollouts: set rewards (e.g. --rewards pose_consistency)"
        )
    accelerator = make_accelerator(config.mixed_precision)
    policy = build_policy(policy_config, config.seed, accelerator)
    reward_set = reward_config.reward_set() if reward_config.rewards else None
    try:
        return trainer_class(config, policy, reward_set, accelerator, (policy_config, reward_config)).train()
    finally:
        if reward_set is not None:
            reward_set.close()
        accelerator.end_training()  # destroys the process group (gloo can abort at exit otherwise)
