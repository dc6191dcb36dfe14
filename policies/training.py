"""What every training recipe does with the camera-conditioned Wan policy: parse its configs (the video size
checked against the policy's rule before anything is built), check the run's inputs (its output folder, its
rewards, every condition), then build the policy and the reward set and run a trainer under the launch's
accelerator (:func:`main`, each recipe's ``__main__``); and how ``lyra-rl evaluate --config`` reads a recipe's
config."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from trl import TrlParser

from lyra_rl.errors import InputError
from lyra_rl.orphans import exit_with_launcher
from lyra_rl.training import (
    DPOConfig,
    GRPOConfig,
    NFTConfig,
    RewardConfig,
    SFTConfig,
    Trainer,
    TrainingConfig,
    make_accelerator,
)
from lyra_rl.training.checkpoint import check_output_dir

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


def parse_recipe_config(path: str | Path) -> tuple[PolicyConfig, RewardConfig, TrainingConfig]:
    """``PolicyConfig``, ``RewardConfig`` and the shared ``TrainingConfig`` of any recipe's YAML file (GRPO's,
    SFT's, DPO's or NFT's: the keys of their own configs are accepted and not read; any other key is an error),
    the video size checked as :func:`parse_configs` checks it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    parser = TrlParser((PolicyConfig, RewardConfig, TrainingConfig))
    policy_config, reward_config, config, unread, _ = parser.parse_args_and_config(
        ["--config", str(path)], return_remaining_strings=True, separate_remaining_strings=True
    )
    algorithm_fields = {f.name for c in (GRPOConfig, SFTConfig, DPOConfig, NFTConfig) for f in fields(c)}
    unknown = [key.removeprefix("--") for key in unread[::2] if key.removeprefix("--") not in algorithm_fields]
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (not a field of the policy, reward or trainer configs)")
    WanCameraPolicy.check_video_size(config.num_frames, config.height, config.width, policy_config.policy)
    return policy_config, reward_config, config


def check_inputs(trainer_class: type[Trainer], reward_config: RewardConfig, config: TrainingConfig) -> None:
    """What a run's configs point at, checked before anything is built or written: the output folder (a fresh
    run into a used one needs ``resume`` or ``overwrite_output_dir``), the rewards the algorithm needs, and
    every condition (:meth:`Trainer.condition_source`: a manifest's every entry, a folder's every clip).
    Raises ``ValueError`` or ``FileNotFoundError`` naming the input."""
    check_output_dir(config.output_dir, config.resume, config.overwrite_output_dir)
    if trainer_class.requires_rewards(config) and not reward_config.rewards:
        raise ValueError(
            f"{trainer_class.name} needs rewards to rank its rollouts: set rewards (e.g. --rewards pose_consistency)"
        )
    trainer_class.condition_source(config)


def build_trainer(
    trainer_class: type[Trainer], policy_config: PolicyConfig, reward_config: RewardConfig, config: TrainingConfig
) -> Trainer:
    """:func:`check_inputs`, then the policy, the reward set (none for ``rewards: []``) and the trainer under the
    launch's accelerator (whose process group is closed again if any of them fails)."""
    check_inputs(trainer_class, reward_config, config)
    accelerator = make_accelerator(config.mixed_precision)
    reward_set = None
    try:
        policy = build_policy(policy_config, config.seed, accelerator)
        reward_set = reward_config.reward_set() if reward_config.rewards else None
        return trainer_class(config, policy, reward_set, accelerator, (policy_config, reward_config))
    except BaseException:
        if reward_set is not None:
            reward_set.close()
        accelerator.end_training()
        raise


def train(trainer: Trainer) -> list[dict[str, float]]:
    """Trains what :func:`build_trainer` built, then closes its reward set and process group; returns the history."""
    try:
        return trainer.train()
    finally:
        if trainer.reward_set is not None:
            trainer.reward_set.close()
        trainer.accelerator.end_training()  # destroys the process group (gloo can abort at exit otherwise)


def run_training(
    trainer_class: type[Trainer], policy_config: PolicyConfig, reward_config: RewardConfig, config: TrainingConfig
) -> list[dict[str, float]]:
    """Checks the inputs, builds the policy and the reward set and trains (:func:`build_trainer`, :func:`train`);
    returns the logged history."""
    return train(build_trainer(trainer_class, policy_config, reward_config, config))


def exit_with_error(error: BaseException) -> None:
    """Prints ``error`` as one line ``PROG: error: ...`` on stderr, as argparse prints a bad flag, and exits 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(
    trainer_class: type[Trainer], config_class: type[TrainingConfig], args: list[str] | None = None
) -> list[dict[str, float]]:
    """A training recipe's command line (``args``, default ``sys.argv``): parse, check, build and train.

    Bad input exits with status 2 and one line ``PROG: error: ...`` on stderr, no traceback: a ``ValueError`` or
    ``FileNotFoundError`` raised before training starts (configs, their ranges, the output folder, rewards,
    conditions, weights files), or an :class:`~lyra_rl.errors.InputError` raised after (no checkpoint of
    ``--resume`` loads). Any other exception during training keeps its traceback. Started by ``accelerate
    launch`` (or torchrun), the process exits when its launcher dies (:func:`~lyra_rl.orphans.exit_with_launcher`).
    """
    exit_with_launcher()
    try:
        trainer = build_trainer(trainer_class, *parse_configs(config_class, args))
    except (ValueError, FileNotFoundError) as error:
        exit_with_error(error)
    try:
        return train(trainer)
    except InputError as error:
        exit_with_error(error)
