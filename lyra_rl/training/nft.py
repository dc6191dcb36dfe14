"""DiffusionNFT of a video policy under Accelerate: online RL on the forward (noising) process.

One step: conditions -> ``num_generations`` ODE rollouts of each (:func:`~lyra_rl.training.groups.ode_groups`;
any sampler would do: NFT keeps only the clean samples, no SDE, no log-probs) -> decode -> rewards -> group
advantages over the groups gathered from every process -> optimality ``r`` in ``[0, 1]`` -> each sample
noised afresh ``timesteps_per_sample`` times (``t`` from the sampler's shifted schedule, as SFT's) -> the
sampling policy's velocity ``v_old`` on those ``x_t`` (no grad) -> for each inner epoch, the policy's velocity
and DiffusionNFT's loss, gradients accumulated, an optimizer step of the backend. The math lives in
``lyra_rl.algorithms.nft``; the machinery in :class:`Trainer`.

The old policy: the paper samples with, and takes ``v_old`` from, an EMA of the trained weights (NVlabs'
"old" adapter, its decay growing from 0 during training). Here the rollouts come from the current weights, and
``v_old`` is the policy *before this step's update*, computed once on the same ``x_t`` before the first
gradient pass: the paper's choice with an EMA decay of 0, correct with LoRA or any trained weights, and no
second copy of them. On the first inner epoch ``v_theta = v_old`` (the loss's gradient is then
``(2 r - 1)`` times the flow-matching gradient towards the sample); further epochs (``num_iterations``) move
``v_theta`` away from the fixed ``v_old`` within the loss's trust region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..algorithms.nft import nft_loss, optimality
from ..algorithms.sft import noised_sample, shifted_timesteps
from ..rollout import micro_batches
from .config import TrainingConfig, reward_scaling
from .groups import local_advantages, ode_groups
from .metrics import MicroBatchMetrics, reduce_metrics, reward_metrics, timed_phase
from .trainer import Trainer, seeded


@dataclass
class NFTConfig(TrainingConfig):
    """DiffusionNFT's arguments beside :class:`TrainingConfig`'s.

    > Sampling: num_generations (the group), num_sampling_steps (ODE).
    > Loss: nft_beta, advantage_clip, scale_rewards, adaptive_weighting, timesteps_per_sample, num_iterations.
    """

    output_dir: str = field(default="outputs/nft", metadata={"help": "Run folder: checkpoints, logs, samples."})
    num_generations: int = field(default=4, metadata={"help": "Rollouts per condition (the group of the advantages)."})
    num_sampling_steps: int = field(
        default=8, metadata={"help": "Denoising steps of a training rollout (the ODE: NFT needs only clean samples)."}
    )
    nft_beta: float = field(
        default=1.0,
        metadata={"help": "DiffusionNFT's beta: how far the implicit positive and negative policies step from v_old."},
    )
    advantage_clip: float = field(
        default=5.0,
        metadata={
            "help": "Advantages are clipped to [-c, c] and mapped to the optimality r in [0, 1]; the loss is scaled "
            "by c, as NVlabs' code does (5 there)."
        },
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "Advantage scaling, as trl's: 'group' (divide by the group's reward std), 'batch' (by the whole "
            "batch's) or 'none' (only centre)."
        },
    )
    adaptive_weighting: bool = field(
        default=True,
        metadata={
            "help": "Divide each sample's x0 error by its detached mean absolute error (the paper's weighting)."
        },
    )
    timesteps_per_sample: int = field(
        default=1, metadata={"help": "Noised copies of each rollout trained per step (a fresh t and noise each)."}
    )
    num_iterations: int = field(
        default=1, metadata={"help": "Inner epochs over each batch of rollouts, all against the same v_old."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scale_rewards = reward_scaling(self.scale_rewards)
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: group-relative advantages need at least two rollouts")
        if not self.nft_beta > 0 or not self.advantage_clip > 0:
            raise ValueError(
                f"nft_beta and advantage_clip must be positive, got {self.nft_beta}, {self.advantage_clip}"
            )
        for name in ("num_sampling_steps", "timesteps_per_sample", "num_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class NFTTrainer(Trainer):
    """Runs :class:`NFTConfig` on a policy's trained weights (LoRA and/or camera modules) and a reward set."""

    name = "NFT"
    needs_rewards = True

    def samples_per_process(self) -> int:
        return self.config.conditions_per_step * self.config.num_generations * self.config.timesteps_per_sample

    def optimizer_steps_per_step(self) -> int:
        return self.config.num_iterations

    def progress_postfix(self, logged: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{logged['reward/total']:.3f}", "loss": f"{logged['loss']:.4f}"}

    def training_step(self) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        timings: dict[str, float] = {}
        rollouts = ode_groups(self, config.num_generations, config.num_sampling_steps, timings)
        local = len(rollouts.samples)
        self.last_advantages, advantages = local_advantages(
            accelerator, rollouts.rewards, rollouts.group_ids, config.scale_rewards, local
        )
        # a group with a rollout no reward could score (NaN total) has NaN advantages: neutral, r = 1/2
        r = optimality(advantages.nan_to_num(0.0), config.advantage_clip)
        with timed_phase("update", timings):
            metrics, grad_norm = self.update(rollouts.samples, rollouts.cond, rollouts.group.ids, r)
        return {
            **reduce_metrics(accelerator, metrics),
            **timings,
            "grad_norm": float(grad_norm),
            **reward_metrics(accelerator, rollouts.scores, rollouts.rewards),
        }

    def noise_and_timesteps(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(K, B * G, C, T', H', W')`` and times ``(K, B * G)`` of the ``K = timesteps_per_sample`` noised
        copies of each rollout (conditions ``ids``, each ``G`` times in a row), from the seed, the step, the
        condition's global index and the rollout's place in its group only."""
        config, group_size = self.config, self.config.num_generations
        keys = [(int(i), k % group_size) for k, i in enumerate(ids.tolist())]
        noise, times = [], []
        for copy in range(config.timesteps_per_sample):
            generators = [seeded(config.seed, 9, self.step, i, g, copy) for i, g in keys]
            noise.append(torch.stack([torch.randn(self.latent_shape, generator=gen) for gen in generators]))
            times.append(torch.cat([shifted_timesteps(1, config.shift, generator=gen) for gen in generators]))
        return torch.stack(noise), torch.stack(times)

    def update(
        self, x0: torch.Tensor, cond, ids: torch.Tensor, r: torch.Tensor
    ) -> tuple[MicroBatchMetrics, torch.Tensor]:
        """``v_old`` on every noised copy (no grad, before any update), then the inner epochs: the policy's
        velocity and :func:`~lyra_rl.algorithms.nft.nft_loss` (times ``advantage_clip``) in micro-batches, an
        optimizer step per epoch. Logs ``loss``, ``velocity_shift`` (mean squared ``v_theta - v_old``: 0 on the
        first epoch), ``optimality_min`` and ``optimality_max``."""
        config, policy, device, local = self.config, self.policy, self.accelerator.device, len(x0)
        noise, t = self.noise_and_timesteps(ids)
        noise, t = noise.to(device), t.to(device)
        noised = [noised_sample(x0, noise[k], t[k])[0] for k in range(config.timesteps_per_sample)]
        parts = micro_batches(local, config.train_micro_batch_size)
        with torch.no_grad(), self.autocast():
            old = [
                torch.cat([policy.velocity(x_t[p], t[k][p], cond[p]) for p in parts]) for k, x_t in enumerate(noised)
            ]
        self.backend.release(policy)
        metrics: MicroBatchMetrics = {}
        for _ in range(config.num_iterations):
            for k, x_t in enumerate(noised):
                for p in parts:
                    with self.autocast():
                        velocity = policy.velocity(x_t[p], t[k][p], cond[p])
                    loss = config.advantage_clip * nft_loss(
                        velocity, old[k][p], x_t[p], x0[p], t[k][p], r[p], config.nft_beta, config.adaptive_weighting
                    )
                    shift = (velocity.detach().float() - old[k][p].float()).square().mean()
                    self.accumulate(
                        metrics,
                        loss,
                        (p.stop - p.start) / local,
                        config.timesteps_per_sample,
                        velocity_shift=shift,
                        optimality_min=r[p].min(),
                        optimality_max=r[p].max(),
                    )
            grad_norm = self.optimizer_step()
        return metrics, grad_norm
