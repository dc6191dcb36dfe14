"""GRPO fine-tuning of a video policy under Accelerate (Flow-GRPO for video world models).

One step: conditions -> SDE rollouts with log-probs (no grad) -> decode -> rewards -> group-relative
advantages (over the group gathered from every process) -> for each inner epoch and trained denoising step:
the stored transition replayed by the policy and the adapter-disabled reference (the rollout's own
:func:`~lyra_rl.rollout.denoising_step`), clipped ratio loss (+ KL) -> an optimizer step of the backend.
The math lives in ``lyra_rl.sampling`` and ``lyra_rl.algorithms.grpo``; the machinery in :class:`Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..algorithms.grpo import grpo_loss, sde_step_mask, select_timesteps
from ..rollout import Rollout, denoising_step, micro_batches, rollout
from ..sampling import gaussian_kl, shifted_sigmas
from .config import TrainingConfig, reward_scaling
from .groups import local_advantages, score_groups
from .metrics import MicroBatchMetrics, reduce_metrics, reward_metrics, timed_phase
from .trainer import Trainer, seeded


@dataclass
class GRPOConfig(TrainingConfig):
    """GRPO's arguments beside :class:`TrainingConfig`'s (names follow trl's ``GRPOConfig`` where they mean the same).

    > Sampling: num_generations (group size), num_sampling_steps, noise_level, train_timestep_fraction,
      train_timestep_window.
    > Loss: beta (KL), epsilon (clip range), scale_rewards, num_iterations (inner epochs).
    """

    output_dir: str = field(default="outputs/grpo", metadata={"help": "Run folder: checkpoints, logs, samples."})
    num_generations: int = field(default=4, metadata={"help": "Rollouts per condition (the GRPO group)."})
    num_sampling_steps: int = field(default=8, metadata={"help": "Denoising steps of a training rollout."})
    noise_level: float = field(default=0.7, metadata={"help": "Flow-GRPO SDE noise level a."})
    train_timestep_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Fraction of denoising steps trained (SDE), drawn at random each step (DanceGRPO); the rest run "
            "the ODE."
        },
    )
    train_timestep_window: int | None = field(
        default=None,
        metadata={
            "help": "Instead of a random fraction, train a window of this many consecutive steps that slides by one "
            "each GRPO step (MixGRPO)."
        },
    )
    beta: float = field(
        default=0.004, metadata={"help": "KL coefficient to the adapter-disabled reference (0 skips the reference)."}
    )
    epsilon: float = field(default=1e-3, metadata={"help": "PPO clip range of the ratio."})
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "Advantage scaling, as trl's: 'group' (divide by the group's reward std), 'batch' (by the whole "
            "batch's) or 'none' (only centre); true and false mean 'group' and 'none'."
        },
    )
    num_iterations: int = field(default=1, metadata={"help": "Inner epochs over each batch of rollouts."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scale_rewards = reward_scaling(self.scale_rewards)
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: group-relative advantages need at least two rollouts")
        if self.train_timestep_window is not None and not 1 <= self.train_timestep_window <= self.num_sampling_steps:
            raise ValueError(
                f"train_timestep_window must be in [1, num_sampling_steps], got {self.train_timestep_window}"
            )
        if not 0 < self.train_timestep_fraction <= 1:
            raise ValueError(f"train_timestep_fraction must be in (0, 1], got {self.train_timestep_fraction}")


class GRPOTrainer(Trainer):
    """Runs :class:`GRPOConfig` on a policy with LoRA adapters (or trained camera modules) and a reward set."""

    name = "GRPO"

    needs_rewards = True

    def __init__(self, config: GRPOConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.sigmas = shifted_sigmas(config.num_sampling_steps, config.shift)

    def samples_per_process(self) -> int:
        return self.config.conditions_per_step * self.config.num_generations

    def optimizer_steps_per_step(self) -> int:
        return self.config.num_iterations

    def progress_postfix(self, logged: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{logged['reward/total']:.3f}", "kl": f"{logged.get('kl', 0.0):.2e}"}

    def training_step(self) -> dict[str, float]:
        config, accelerator, policy, device = self.config, self.accelerator, self.policy, self.accelerator.device
        timings: dict[str, float] = {}
        with timed_phase("conditions", timings):
            batch = self.conditions(self.step_indices())
            cond, uncond = self.policy_conditions(batch, config.num_generations)
            initial, step_noise = self.initial_and_step_noise(batch.ids)
            train_steps = self.trained_timesteps()
        with timed_phase("rollout", timings), self.autocast():
            result = rollout(
                policy,
                cond,
                initial.to(device),
                self.sigmas.to(device),
                sde_step_mask(config.num_sampling_steps, train_steps),
                config.noise_level,
                step_noise.to(device),
                uncond,
                config.guidance_scale,
                config.train_micro_batch_size,
            )
            self.backend.release(policy)
        group = batch.repeat(config.num_generations)
        scores, all_rewards, all_groups = score_groups(self, result.states[-1], group, cond, timings)
        self.last_advantages, advantages = local_advantages(
            accelerator, all_rewards, all_groups, config.scale_rewards, len(group.ids)
        )

        with timed_phase("update", timings):
            metrics, grad_norm = self.update(result, train_steps, cond, uncond, advantages)
        return {
            **reduce_metrics(accelerator, metrics),
            **timings,
            "grad_norm": float(grad_norm),
            **reward_metrics(accelerator, scores, all_rewards),
        }

    def initial_and_step_noise(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial noise shared within each group ``(B * G, C, T', H', W')`` and per-rollout SDE noise
        ``(S, B * G, C, T', H', W')``, from the seed, the step and global indices only."""
        group_size, steps, shape = self.config.num_generations, self.config.num_sampling_steps, self.latent_shape
        initial = torch.stack([torch.randn(shape, generator=seeded(self.config.seed, 1, int(i))) for i in ids])
        rollouts = [(int(i), g) for i in ids for g in range(group_size)]
        step_noise = torch.stack(
            [
                torch.randn((steps, *shape), generator=seeded(self.config.seed, 2, self.step, i, g))
                for i, g in rollouts
            ],
            dim=1,
        )
        return initial.repeat_interleave(group_size, dim=0), step_noise

    def trained_timesteps(self) -> torch.Tensor:
        """The denoising steps trained (and SDE-sampled) at this step: MixGRPO's sliding window, or a random
        fraction drawn from the seed and the step."""
        config = self.config
        if config.train_timestep_window is not None:
            size = config.train_timestep_window
            return select_timesteps(
                config.num_sampling_steps, window=(self.step % (config.num_sampling_steps - size + 1), size)
            )
        return select_timesteps(
            config.num_sampling_steps, config.train_timestep_fraction, generator=seeded(config.seed, 3, self.step)
        )

    def update(
        self, result: Rollout, train_steps: torch.Tensor, cond, uncond, advantages: torch.Tensor
    ) -> tuple[MicroBatchMetrics, torch.Tensor]:
        """Inner epochs over the trained steps of the rollouts, in micro-batches: the loss of each, gradients
        accumulated over micro-batches and steps, then an optimizer step per epoch."""
        config, local = self.config, len(advantages)
        metrics: MicroBatchMetrics = {}
        for _ in range(config.num_iterations):
            for k in train_steps.tolist():
                for part in micro_batches(local, config.train_micro_batch_size):
                    loss, step_metrics = self.step_loss(
                        result, k, part, cond[part], None if uncond is None else uncond[part], advantages[part]
                    )
                    share = (part.stop - part.start) / local  # the loss is a mean over the micro-batch
                    self.accumulate(metrics, loss, share, len(train_steps), **step_metrics)
            grad_norm = self.optimizer_step()
        return metrics, grad_norm

    def step_loss(self, result: Rollout, k: int, part: slice, cond, uncond, advantages: torch.Tensor):
        """The GRPO loss of denoising step ``k`` for the rollouts ``part``: the stored transition replayed under
        the current policy, clipped ratio against its rollout log-prob, KL to the adapter-disabled reference."""
        config, policy = self.config, self.policy
        x, x_next = result.states[k][part], result.states[k + 1][part]
        replay = (x, self.sigmas[k], self.sigmas[k + 1], cond, uncond, config.guidance_scale, config.noise_level)
        with self.autocast():
            step = denoising_step(policy, *replay, prev_sample=x_next)
        kl = None
        if config.beta > 0:
            with torch.no_grad(), policy.adapters_disabled(), self.autocast():
                reference = denoising_step(policy, *replay, prev_sample=x_next)
            kl = gaussian_kl(step.mean, reference.mean, step.std)
        old_log_prob = result.log_probs[part, k].to(self.accelerator.device)
        return grpo_loss(step.log_prob, old_log_prob, advantages, config.epsilon, kl, config.beta)
