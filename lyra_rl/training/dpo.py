"""Online Flow-DPO of a video policy under Accelerate (Diffusion-DPO with the flow-matching velocity target).

One step: conditions -> ``num_generations`` ODE rollouts of each (:func:`~lyra_rl.training.groups.ode_groups`;
DPO needs only clean samples) -> decode -> rewards -> (winner, loser) pairs within each group, best against
worst or every two rollouts, a pair kept where their rewards differ by more than ``min_reward_margin`` ->
for each pair one time ``t`` and one noise ``eps`` for winner and loser alike, the policy's velocity and the
adapter-disabled reference's (no grad) on both noised samples, Flow-DPO's loss -> an optimizer step of the
backend. The math lives in ``lyra_rl.algorithms.dpo``; the machinery in :class:`Trainer`.

Every group gives the same number of candidate pairs whatever its rewards (a pair left out has weight 0), so
every process runs the same passes (sharded weights need it) and the loss is the mean over the pairs kept on
all processes, whatever their number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..algorithms.dpo import candidate_pairs, flow_dpo_loss, velocity_errors
from ..algorithms.sft import noised_sample, shifted_timesteps
from ..rollout import micro_batches
from .config import TrainingConfig
from .groups import ScoredGroups, ode_groups
from .metrics import reward_metrics, timed_phase
from .trainer import Trainer, seeded

#: How the pairs of a group are chosen.
PAIR_SELECTIONS = ("best_worst", "all")


@dataclass
class DPOConfig(TrainingConfig):
    """Online Flow-DPO's arguments beside :class:`TrainingConfig`'s.

    > Sampling: num_generations (rollouts per condition), num_sampling_steps (ODE).
    > Pairs: pair_selection, min_reward_margin.
    > Loss: beta.
    """

    output_dir: str = field(default="outputs/dpo", metadata={"help": "Run folder: checkpoints, logs, samples."})
    num_generations: int = field(
        default=4, metadata={"help": "Rollouts per condition, ranked by the reward set into preference pairs."}
    )
    num_sampling_steps: int = field(
        default=8, metadata={"help": "Denoising steps of a training rollout (the ODE: DPO needs only clean samples)."}
    )
    pair_selection: str = field(
        default="best_worst",
        metadata={
            "help": "Pairs of each group: 'best_worst' (its best rollout against its worst) or 'all' (every two "
            "rollouts, the better one the winner)."
        },
    )
    min_reward_margin: float = field(
        default=0.0, metadata={"help": "Pairs whose rewards differ by no more than this are left out."}
    )
    beta: float = field(
        default=100.0,
        metadata={
            "help": "Flow-DPO's preference strength (VideoAlign uses about 100 for video; Diffusion-DPO's 5000 is for "
            "eps-prediction)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: a preference pair needs two rollouts of a condition")
        if self.pair_selection not in PAIR_SELECTIONS:
            raise ValueError(f"pair_selection must be one of {PAIR_SELECTIONS}, got {self.pair_selection!r}")
        if not self.beta > 0 or self.num_sampling_steps < 1:
            raise ValueError(
                f"beta must be positive and num_sampling_steps >= 1, got {self.beta}, {self.num_sampling_steps}"
            )


class DPOTrainer(Trainer):
    """Runs :class:`DPOConfig` on a policy with LoRA adapters (its reference: the adapters disabled) and a
    reward set."""

    name = "DPO"
    needs_rewards = True

    def __init__(self, config: DPOConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        with self.policy.adapters_disabled():  # the reference: a policy without LoRA fails here, before any rollout
            pass

    def samples_per_process(self) -> int:
        return self.config.conditions_per_step * self.config.num_generations

    def progress_postfix(self, logged: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{logged['reward/total']:.3f}", "margin": f"{logged['margin']:.2e}"}

    def training_step(self) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        timings: dict[str, float] = {}
        rollouts = ode_groups(self, config.num_generations, config.num_sampling_steps, timings)
        pairs, reward_margins = candidate_pairs(
            rollouts.scores.total, config.num_generations, config.pair_selection == "all"
        )
        kept = reward_margins > config.min_reward_margin  # False where a reward is NaN
        with timed_phase("update", timings):
            logged = self.update(rollouts, pairs, kept, reward_margins)
            grad_norm = self.optimizer_step()
        return {
            **logged,
            **timings,
            "grad_norm": float(grad_norm),
            **reward_metrics(accelerator, rollouts.scores, rollouts.rewards),
        }

    def pair_noise_and_timesteps(self, ids: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(P, C, T', H', W')`` and times ``(P,)`` of each pair (rows of a group whose condition ids are
        ``ids``), shared by its winner and loser, from the seed, the step, the condition's global index and the
        pair's rollouts only (times drawn with the sampler's shifted schedule, as SFT's)."""
        group_size = self.config.num_generations
        generators = [
            seeded(self.config.seed, 8, self.step, int(ids[w]), int(w) % group_size, int(lo) % group_size)
            for w, lo in pairs.tolist()
        ]
        noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators])
        t = torch.cat([shifted_timesteps(1, self.config.shift, generator=g) for g in generators])
        return noise, t

    def update(
        self, rollouts: ScoredGroups, pairs: torch.Tensor, kept: torch.Tensor, reward_margins: torch.Tensor
    ) -> dict[str, float]:
        """Flow-DPO over the candidate ``pairs (P, 2)``, those not ``kept`` at weight 0, in micro-batches of
        ``train_micro_batch_size // 2`` pairs (a winner and a loser each); gradients accumulated. Returns the
        means over the pairs kept on every process: ``loss``, ``margin`` (the implicit reward margin),
        ``implicit_accuracy`` (share with a positive margin), ``reward_margin``, and their number, ``pairs``."""
        config, policy, accelerator, device = self.config, self.policy, self.accelerator, self.accelerator.device
        total_kept = float(accelerator.reduce(kept.sum().float()[None].to(device), "sum"))
        # the backends average gradients over the processes: each process's share of the global mean
        weights = kept.float().to(device) * accelerator.num_processes / max(total_kept, 1.0)
        noise, t = self.pair_noise_and_timesteps(rollouts.group.ids, pairs)
        noise, t = noise.to(device), t.to(device)
        margins = torch.zeros(len(pairs), device=device)
        size = None if config.train_micro_batch_size is None else max(1, config.train_micro_batch_size // 2)
        for part in micro_batches(len(pairs), size):
            rows = torch.cat([pairs[part, 0], pairs[part, 1]])  # winners, then losers
            times, eps = torch.cat([t[part]] * 2), torch.cat([noise[part]] * 2)  # the same for both
            x_t, target = noised_sample(rollouts.samples[rows.to(device)], eps, times)
            cond = rollouts.cond[rows]
            with self.autocast():
                errors = velocity_errors(policy.velocity(x_t, times, cond), target)
            with torch.no_grad(), policy.adapters_disabled(), self.autocast():
                reference = velocity_errors(policy.velocity(x_t, times, cond), target)
            n = part.stop - part.start
            loss, margins[part] = flow_dpo_loss(
                errors[:n], errors[n:], reference[:n], reference[n:], config.beta, weights[part]
            )
            self.accumulate({}, loss, 1.0)  # the weights make it its share; a non-finite loss skips the step
        kept, reward_margins = kept.to(device), reward_margins.to(device)
        sums = torch.stack(
            [
                (F.softplus(-margins) * kept).sum(),  # the pairs' losses, -log sigmoid(margin)
                (margins * kept).sum(),
                ((margins > 0) & kept).float().sum(),
                reward_margins.nan_to_num(0.0).mul(kept).sum(),
            ]
        )
        sums = accelerator.reduce(sums, "sum").tolist()
        means = [s / total_kept if total_kept else math.nan for s in sums]
        return dict(zip(("loss", "margin", "implicit_accuracy", "reward_margin"), means), pairs=total_kept)
