"""Online rollouts in groups, shared by the trainers that learn from their own scored samples (GRPO, DPO, NFT).

Each process samples ``num_generations`` rollouts of each of its conditions (a group, in a row), decodes and
scores them with the trainer's reward set, and gathers the totals and group ids of every process, so that
group statistics (GRPO's and NFT's advantages) see whole groups. GRPO draws its rollouts with the SDE and
log-probs (``lyra_rl.training.grpo``); DPO and NFT need only clean samples and draw them with the ODE
(:func:`ode_groups`), each rollout from its own initial noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..algorithms.grpo import group_advantages
from ..data.conditions import ConditionBatch
from ..reward import RewardSetOutput
from ..rollout import rollout
from ..sampling import shifted_sigmas
from .metrics import timed_phase
from .trainer import seeded

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .trainer import Trainer


@dataclass
class ScoredGroups:
    """A step's rollouts and their scores.

    Attributes:
        group: the conditions, each ``G`` times in a row (``B * G``).
        cond, uncond: the policy's conditions of ``group`` (``uncond``: the negative prompt's, with guidance).
        samples: the clean latents ``(B * G, C, T', H', W')``.
        scores: the reward set's scores of the decoded videos.
        rewards: ``reward/total`` of every process's rollouts, gathered ``(N,)``.
        group_ids: their condition ids, gathered ``(N,)``.
    """

    group: ConditionBatch
    cond: Any
    uncond: Any
    samples: Tensor
    scores: RewardSetOutput
    rewards: Tensor
    group_ids: Tensor


def score_groups(
    trainer: Trainer, samples: Tensor, group: ConditionBatch, cond: Any, timings: dict[str, float]
) -> tuple[RewardSetOutput, Tensor, Tensor]:
    """Decodes the rollouts' latents ``samples (B * G, ...)`` and scores them (phases ``decode`` and ``reward``);
    returns the scores, and the totals and group ids gathered from every process."""
    accelerator, device = trainer.accelerator, trainer.accelerator.device
    with timed_phase("decode", timings):
        videos = trainer.policy.decode(samples, cond)
    with timed_phase("reward", timings):
        scores = trainer.reward_set(videos.float().cpu(), group.cameras, group.prompts, images=group.images)
    all_rewards = accelerator.gather(scores.total.to(device)).cpu()
    all_groups = accelerator.gather(group.ids.to(device)).cpu()
    return scores, all_rewards, all_groups


def local_advantages(
    accelerator: Accelerator, rewards: Tensor, group_ids: Tensor, scale: str, local: int
) -> tuple[Tensor, Tensor]:
    """Group advantages (:func:`~lyra_rl.algorithms.grpo.group_advantages`) of the gathered ``rewards`` and
    ``group_ids`` ``(N,)``; returns them all and this process's ``local`` rows, on its device."""
    advantages = group_advantages(rewards, group_ids, scale=scale)
    offset = accelerator.process_index * local
    return advantages, advantages[offset : offset + local].to(accelerator.device)


def rollout_noise(seed: int, step: int, ids: Tensor, group_size: int, latent_shape) -> Tensor:
    """Initial noise ``(B * G, C, T', H', W')``, its own for every rollout (an ODE group from shared noise would
    be one sample ``G`` times), from the seed, the step and global indices only."""
    return torch.stack(
        [
            torch.randn(tuple(latent_shape), generator=seeded(seed, 7, step, int(i), g))
            for i in ids
            for g in range(group_size)
        ]
    )


def ode_groups(trainer: Trainer, num_generations: int, num_sampling_steps: int, timings: dict) -> ScoredGroups:
    """The step's conditions, ``num_generations`` ODE rollouts of each (``num_sampling_steps`` Euler steps of the
    shifted schedule, in ``train_micro_batch_size`` slices, with the config's guidance), decoded and scored
    (phases ``conditions``, ``rollout``, ``decode``, ``reward``)."""
    config, policy, device = trainer.config, trainer.policy, trainer.accelerator.device
    with timed_phase("conditions", timings):
        batch = trainer.conditions(trainer.step_indices())
        cond, uncond = trainer.policy_conditions(batch, num_generations)
        noise = rollout_noise(config.seed, trainer.step, batch.ids, num_generations, trainer.latent_shape)
    with timed_phase("rollout", timings), trainer.autocast():
        result = rollout(
            policy,
            cond,
            noise.to(device),
            shifted_sigmas(num_sampling_steps, config.shift).to(device),
            torch.zeros(num_sampling_steps, dtype=torch.bool),  # the ODE on every step
            0.0,
            None,
            uncond,
            config.guidance_scale,
            config.train_micro_batch_size,
        )
        trainer.backend.release(policy)
    group = batch.repeat(num_generations)
    scores, rewards, group_ids = score_groups(trainer, result.states[-1], group, cond, timings)
    return ScoredGroups(group, cond, uncond, result.states[-1].float(), scores, rewards, group_ids)
