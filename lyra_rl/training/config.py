"""The configs every trainer shares, as trl splits them: :class:`TrainingConfig` (output, data, sampling of
evaluation, optimisation, checkpoints) extended by each algorithm's own (``GRPOConfig``), and
:class:`RewardConfig`; the policy's config is the policy package's (``policies.PolicyConfig``). A recipe
parses them together with one ``trl.TrlParser`` (a YAML file plus command-line overrides; ``--help`` lists
every field)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from ..algorithms.grpo import REWARD_SCALINGS
from ..data.conditions import CAMERA_PATHS
from ..reward import REWARD_ERRORS, RewardSet

LR_SCHEDULES = ("constant", "linear", "cosine")
#: Mixed-precision settings the trainers implement: the frozen weights' dtype (fp16 would need loss scaling).
WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The frozen weights' dtype under ``mixed_precision`` ('no' or 'bf16'); any other is an error."""
    if mixed_precision not in WEIGHT_DTYPES:
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
    return WEIGHT_DTYPES[mixed_precision]


def reward_scaling(value: str | bool) -> str:
    """A ``scale_rewards`` value as trl takes it (YAML booleans and command-line words alike: true is 'group',
    false 'none') as one of ``REWARD_SCALINGS``; any other is an error."""
    scale = str(value).lower()
    scale = {"true": "group", "false": "none"}.get(scale, scale)
    if scale not in REWARD_SCALINGS:
        raise ValueError(f"scale_rewards must be one of {REWARD_SCALINGS}, got {value!r}")
    return scale


def learning_rate_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based): a linear warm-up through
    ``(k + 1) / (warmup_steps + 1)`` (the first step already moves the weights), then ``schedule`` from 1
    to 0 over the remaining steps (``constant`` stays at 1)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule]


@dataclass
class RewardConfig:
    """The reward set that scores rollouts and held-out samples.

    > Rewards: rewards, reward_weights, reward_kwargs, reward_workers, reward_errors, reward_timeouts.
    """

    rewards: list[str] = field(
        default_factory=lambda: ["pose_consistency", "epipolar"],
        metadata={"help": "Reward names or module:Class paths."},
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward."})
    reward_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Per-reward options {name: {option: value}} (YAML mapping or JSON)."}
    )
    reward_workers: int = field(default=0, metadata={"help": "Reward worker processes per training process."})
    reward_errors: str = field(
        default="contain",
        metadata={
            "help": "A reward's fault on a video (it raises, returns inf or a wrong shape): 'contain' (the video "
            "gets the reward's floor, counted in errors/<name>) or 'raise' (to debug a plugin)."
        },
    )
    reward_timeouts: list[float] | None = field(
        default=None,
        metadata={
            "help": "Seconds each reward may take on one video, one per reward (0: no limit); a reward over its "
            "limit scores that video at its floor, counted in errors/<name>. Default: no limits."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.reward_kwargs, str):
            try:
                self.reward_kwargs = json.loads(self.reward_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"reward_kwargs is not JSON: {error}") from error
        if self.reward_errors not in REWARD_ERRORS:
            raise ValueError(f"reward_errors must be one of {REWARD_ERRORS}, got {self.reward_errors!r}")
        timeouts = self.reward_timeouts
        if timeouts is not None and (
            len(timeouts) != len(self.rewards) or not all(0 <= t < math.inf for t in timeouts)
        ):
            raise ValueError(
                f"reward_timeouts must be one per reward ({len(self.rewards)}: {', '.join(self.rewards)}), each "
                f">= 0 seconds (0: no limit), got {timeouts}"
            )

    def reward_set(self) -> RewardSet:
        return RewardSet.from_names(
            self.rewards,
            self.reward_weights,
            self.reward_kwargs,
            self.reward_workers,
            self.reward_errors,
            self.reward_timeouts,
        )


@dataclass
class TrainingConfig:
    """Arguments every trainer shares (names follow trl's where they mean the same).

    > Data: conditions, camera_paths, num_frames, height, width, conditions_per_step (per process).
    > Evaluation: eval_conditions, eval_sampling_steps (every save_steps), final_evaluation_seeds (after training),
      shift, guidance_scale, negative_prompt.
    > Optimisation: learning_rate, weight_decay, lr_scheduler_type, warmup_steps, max_grad_norm, max_steps, seed,
      mixed_precision, train_micro_batch_size.
    > Output: output_dir, logging_steps, save_steps, save_last_step, resume, overwrite_output_dir.
    """

    output_dir: str = field(default="outputs/run", metadata={"help": "Run folder: checkpoints, logs, samples."})
    conditions: str = field(
        default="procedural",
        metadata={
            "help": "'procedural', a .jsonl manifest, a folder of images with <stem>.txt prompts, a MultiCamVideo "
            "folder (scene*/videos/camNN.mp4, with videos for SFT) or its latent cache (recipes/preprocess.py)."
        },
    )
    camera_paths: str = field(
        default="presets",
        metadata={
            "help": "Procedural conditions' commanded paths: 'presets' (the seven in turn) or 'random' (smooth "
            "random paths, as MultiCamVideo's)."
        },
    )
    num_frames: int = field(default=9, metadata={"help": "Frames per video (the policy's rule: Wan's is 4k+1)."})
    height: int = field(default=32, metadata={"help": "Frame height (the policy's rule: Wan's is a multiple of 16)."})
    width: int = field(default=48, metadata={"help": "Frame width (the policy's rule: Wan's is a multiple of 16)."})
    conditions_per_step: int = field(default=2, metadata={"help": "Conditions per process and step."})
    shift: float = field(default=5.0, metadata={"help": "Flow-matching timestep shift (Wan uses 5)."})
    guidance_scale: float = field(
        default=1.0,
        metadata={
            "help": "Classifier-free guidance weight of sampling: GRPO's rollouts and updates, every trainer's "
            "evaluation samples (1 = no guidance, one forward pass per step)."
        },
    )
    negative_prompt: str = field(
        default="", metadata={"help": "Prompt of the unconditional branch when guidance_scale != 1."}
    )
    train_micro_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Samples per forward pass of the rollout and forward/backward pass of the update, gradients "
            "accumulated over the local batch (default: all at once)."
        },
    )
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "'no' or 'bf16' (default: accelerate's config): frozen DiT weights in bf16, trained ones in "
            "float32, forward passes under autocast."
        },
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(
        default=0.0,
        metadata={
            "help": "AdamW weight decay (it would pull the identity-initialised camera projectors and loaded camera "
            "modules towards 0)."
        },
    )
    lr_scheduler_type: str = field(
        default="constant",
        metadata={
            "help": "Learning-rate schedule over the optimizer steps after the warm-up: constant, linear or cosine "
            "(to 0)."
        },
    )
    warmup_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps of linear warm-up (the first one at 1/(warmup_steps+1) of the rate)."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    max_steps: int = field(default=20, metadata={"help": "Training steps."})
    seed: int = field(default=0, metadata={"help": "Seed of conditions, noise and initial weights."})
    eval_conditions: int = field(
        default=2,
        metadata={
            "help": "Held-out conditions sampled every save_steps, the same each time (procedural: scenes of seed + "
            "1; user conditions: the last ones, not trained on); 0 turns evaluation off."
        },
    )
    eval_sampling_steps: int = field(
        default=20, metadata={"help": "Denoising steps of the evaluation samples (deterministic ODE)."}
    )
    final_evaluation_seeds: list[int] = field(
        default_factory=list,
        metadata={
            "help": "After training, what it changed (lyra-rl evaluate --before-after, one process): the "
            "eval_conditions held-out conditions under each of these sampling seeds, with the adapters disabled "
            "(before) and enabled (after), into output_dir/evaluation/. LoRA runs only; empty: none."
        },
    )
    logging_steps: int = field(default=1, metadata={"help": "Log scalars every N steps."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every N steps (and at the end)."})
    save_last_step: bool = field(
        default=True,
        metadata={
            "help": "Between checkpoints, keep the state after the last step (last-step-<step>, replaced every step) "
            "so that a crash loses at most the step in flight."
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue from the last complete checkpoint in output_dir (one that does not load is skipped, "
            "with a warning, for the one before it)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an output_dir a run already wrote into, deleting its checkpoints, logs/, "
            "samples/ and curves (without this or resume, such a folder is an error)."
        },
    )

    def __post_init__(self) -> None:
        if self.train_micro_batch_size is not None and self.train_micro_batch_size < 1:
            raise ValueError(f"train_micro_batch_size must be >= 1, got {self.train_micro_batch_size}")
        if self.lr_scheduler_type not in LR_SCHEDULES or self.warmup_steps < 0:
            raise ValueError(f"lr_scheduler_type must be one of {LR_SCHEDULES} and warmup_steps >= 0")
        if self.eval_conditions < 0 or self.eval_sampling_steps < 1:
            raise ValueError("eval_conditions must be >= 0 and eval_sampling_steps >= 1")
        if self.final_evaluation_seeds and (
            not self.eval_conditions or len(set(self.final_evaluation_seeds)) != len(self.final_evaluation_seeds)
        ):
            raise ValueError(
                f"final_evaluation_seeds must differ and need eval_conditions >= 1, got {self.final_evaluation_seeds} "
                f"and {self.eval_conditions}"
            )
        if self.mixed_precision is not None:
            weight_dtype(self.mixed_precision)
        for name in ("conditions_per_step", "logging_steps", "save_steps", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.camera_paths != "presets" and self.conditions != "procedural":
            raise ValueError(f"camera_paths {self.camera_paths!r} applies to procedural conditions only")
        if self.resume and self.overwrite_output_dir:
            raise ValueError("resume and overwrite_output_dir exclude each other: continue the run or replace it")
        if self.camera_paths not in CAMERA_PATHS:
            raise ValueError(f"camera_paths must be one of {CAMERA_PATHS}, got {self.camera_paths!r}")
