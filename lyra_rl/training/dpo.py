"""Flow-DPO of a video policy under Accelerate (Diffusion-DPO with the flow-matching velocity target), online or
from a manifest of preference pairs.

Online, one step: conditions -> ``num_generations`` ODE rollouts of each (:func:`~lyra_rl.training.groups.ode_groups`;
DPO needs only clean samples) -> decode -> rewards -> (winner, loser) pairs within each group, best against
worst or every two rollouts, a pair kept where their rewards differ by more than ``min_reward_margin`` ->
for each pair one time ``t`` and one noise ``eps`` for winner and loser alike, the policy's velocity and the
adapter-disabled reference's (no grad) on both noised samples, Flow-DPO's loss -> an optimizer step of the
backend. Offline (``pairs``: :mod:`lyra_rl.data.preference_pairs`), one step takes ``conditions_per_step`` pairs
of the manifest in turn, their winner and loser videos encoded once and cached, and updates the same way. The
math lives in ``lyra_rl.algorithms.dpo``; the machinery in :class:`Trainer`.

Every group gives the same number of candidate pairs whatever its rewards (a pair left out has weight 0), so
every process runs the same passes (sharded weights need it) and the loss is the mean over the pairs kept on
all processes, whatever their number.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..algorithms.dpo import candidate_pairs, flow_dpo_loss, velocity_errors
from ..algorithms.sft import noised_sample, shifted_timesteps
from ..data.conditions import ConditionSource
from ..data.preference_pairs import pair_batch, read_clip, read_preference_pairs
from ..rollout import micro_batches
from .config import TrainingConfig
from .groups import ode_groups
from .metrics import Curve, reward_metrics, timed_phase
from .trainer import Trainer, seeded

#: How the pairs of a group are chosen.
PAIR_SELECTIONS = ("best_worst", "all")


@dataclass
class DPOConfig(TrainingConfig):
    """Online Flow-DPO's arguments beside :class:`TrainingConfig`'s.

    > Sampling: num_generations (rollouts per condition), num_sampling_steps (ODE).
    > Pairs: pair_selection, min_reward_margin (online); pairs (offline: a manifest).
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
    pairs: str | None = field(
        default=None,
        metadata={
            "help": "Offline DPO: a JSONL of preference pairs, {image, prompt, direction, winner, loser} per line "
            "(videos; no rollouts, rewards only for the held-out evaluation)."
        },
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


@functools.lru_cache(maxsize=4)
def _read_pairs(path: str, version: tuple[int, int], num_frames: int) -> tuple:
    return tuple(read_preference_pairs(path, num_frames))


def manifest_pairs(config: DPOConfig) -> list:
    """The checked pairs of ``config.pairs``, read (every video probed) once per manifest version: a recipe checks
    them before building anything, and the trainer then uses them."""
    path = Path(config.pairs)
    stat = path.stat() if path.is_file() else None  # a missing manifest: read_preference_pairs says so
    version = (stat.st_mtime_ns, stat.st_size) if stat else (0, 0)
    return list(_read_pairs(str(path), version, config.num_frames))


class DPOTrainer(Trainer):
    """Runs :class:`DPOConfig` on a policy with a reference (LoRA adapters, or camera modules only) and a reward
    set (offline: a manifest of pairs; rewards, if any, score the held-out samples)."""

    name = "DPO"
    needs_rewards = True

    @classmethod
    def requires_rewards(cls, config: DPOConfig) -> bool:
        return config.pairs is None

    @classmethod
    def condition_source(cls, config: DPOConfig) -> ConditionSource:
        if config.pairs is not None:  # checked whole before anything is built, as conditions are
            manifest_pairs(config)
        return super().condition_source(config)

    def __init__(self, config: DPOConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        with self.policy.adapters_disabled():  # the reference: a policy without one fails here, before any rollout
            pass
        self.preference_pairs = None if config.pairs is None else manifest_pairs(config)
        self._pair_latents: dict[Path, torch.Tensor] = {}  # video -> its latents (CPU): each encoded once
        if self.preference_pairs:  # no rollout rewards to plot: the loss, and held-out rewards where there are some
            self.curve = Curve("loss_curve.png", "loss", "Flow-DPO loss", "eval/reward/total")

    def samples_per_process(self) -> int:
        return self.config.conditions_per_step * (2 if self.config.pairs else self.config.num_generations)

    def progress_postfix(self, logged: dict[str, float]) -> dict[str, str]:
        reward = {} if self.preference_pairs else {"reward": f"{logged['reward/total']:.3f}"}
        return {**reward, "margin": f"{logged['margin']:.2e}"}

    def training_step(self) -> dict[str, float]:
        if self.preference_pairs:
            return self.offline_step()
        config, accelerator = self.config, self.accelerator
        timings: dict[str, float] = {}
        rollouts = ode_groups(self, config.num_generations, config.num_sampling_steps, timings)
        pairs, reward_margins = candidate_pairs(
            rollouts.scores.total, config.num_generations, config.pair_selection == "all"
        )
        kept = reward_margins > config.min_reward_margin  # False where a reward is NaN
        with timed_phase("update", timings):
            noise, t = self.pair_noise_and_timesteps(rollouts.group.ids, pairs, config.num_generations)
            logged = self.update(rollouts.samples, rollouts.cond, noise, t, pairs, kept, reward_margins)
            grad_norm = self.optimizer_step()
        return {
            **logged,
            **timings,
            "grad_norm": float(grad_norm),
            **reward_metrics(accelerator, rollouts.scores, rollouts.rewards),
        }

    def pair_latents(self, videos: list[Path]) -> torch.Tensor:
        """The generated latents ``(B, C, T', H', W')`` of the manifest's videos, encoded once and cached."""
        config = self.config
        for path in dict.fromkeys(v for v in videos if v not in self._pair_latents):
            clip = read_clip(path, config.num_frames, config.height, config.width)[None]
            with torch.no_grad():
                self._pair_latents[path] = self.policy.generated_latents(clip.to(self.accelerator.device))[0].cpu()
        return torch.stack([self._pair_latents[v] for v in videos]).to(self.accelerator.device)

    def offline_step(self) -> dict[str, float]:
        """A step on the manifest's pairs of this process (:meth:`step_indices`, in turn): each condition's winner
        and loser in a row, updated as online pairs are."""
        config, timings = self.config, {}
        with timed_phase("encode", timings):
            batch, winners, losers = pair_batch(
                self.preference_pairs, self.step_indices(), config.num_frames, config.height, config.width
            )
            samples = torch.stack([self.pair_latents(winners), self.pair_latents(losers)], dim=1).flatten(0, 1)
            cond, _ = self.policy_conditions(batch, repeats=2)
        rows = torch.arange(2 * len(winners)).view(-1, 2)  # (winner, loser) rows of each pair
        with timed_phase("update", timings):
            noise, t = self.pair_noise_and_timesteps(batch.ids.repeat_interleave(2), rows, 2)
            kept, margins = torch.ones(len(rows), dtype=torch.bool), torch.full((len(rows),), math.nan)
            logged = self.update(samples, cond, noise, t, rows, kept, margins)
            grad_norm = self.optimizer_step()
        logged.pop("reward_margin")  # a manifest's pairs have no rewards
        return {**logged, **timings, "grad_norm": float(grad_norm)}

    def pair_noise_and_timesteps(
        self, ids: torch.Tensor, pairs: torch.Tensor, group_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(P, C, T', H', W')`` and times ``(P,)`` of each pair (rows of groups of ``group_size`` whose
        condition ids are ``ids``), shared by its winner and loser, from the seed, the step, the condition's global
        index and the pair's rows in their group only (times drawn with the sampler's shifted schedule, as SFT's)."""
        generators = [
            seeded(self.config.seed, 8, self.step, int(ids[w]), int(w) % group_size, int(lo) % group_size)
            for w, lo in pairs.tolist()
        ]
        noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators])
        t = torch.cat([shifted_timesteps(1, self.config.shift, generator=g) for g in generators])
        return noise, t

    def update(
        self,
        samples: torch.Tensor,
        cond,
        noise: torch.Tensor,
        t: torch.Tensor,
        pairs: torch.Tensor,
        kept: torch.Tensor,
        reward_margins: torch.Tensor,
    ) -> dict[str, float]:
        """Flow-DPO over the candidate ``pairs (P, 2)`` (rows of ``samples`` and their conditions ``cond``), each
        noised with its ``noise`` and time ``t``, those not ``kept`` at weight 0, in micro-batches of
        ``train_micro_batch_size // 2`` pairs (a winner and a loser each); gradients accumulated. Returns the
        means over the pairs kept on every process: ``loss``, ``margin`` (the implicit reward margin),
        ``implicit_accuracy`` (share with a positive margin), ``reward_margin``, and their number, ``pairs``."""
        config, policy, accelerator, device = self.config, self.policy, self.accelerator, self.accelerator.device
        total_kept = float(accelerator.reduce(kept.sum().float()[None].to(device), "sum"))
        # the backends average gradients over the processes: each process's share of the global mean
        weights = kept.float().to(device) * accelerator.num_processes / max(total_kept, 1.0)
        noise, t = noise.to(device), t.to(device)
        margins = torch.zeros(len(pairs), device=device)
        size = None if config.train_micro_batch_size is None else max(1, config.train_micro_batch_size // 2)
        for part in micro_batches(len(pairs), size):
            rows = torch.cat([pairs[part, 0], pairs[part, 1]])  # winners, then losers
            times, eps = torch.cat([t[part]] * 2), torch.cat([noise[part]] * 2)  # the same for both
            x_t, target = noised_sample(samples[rows.to(device)], eps, times)
            pair_cond = cond[rows]
            with self.autocast():
                errors = velocity_errors(policy.velocity(x_t, times, pair_cond), target)
            with torch.no_grad(), policy.adapters_disabled(), self.autocast():
                reference = velocity_errors(policy.velocity(x_t, times, pair_cond), target)
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
