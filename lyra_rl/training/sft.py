"""Action-conditioned SFT: flow matching of a camera-conditioned policy on (video, camera trajectory, prompt).

One step: conditions with their true videos -> the latents the policy generates for them (its targets, or a
latent cache's) -> noise and training times from the seed, the step and global indices (the sampler's shifted
schedule) -> ``x_t`` and the velocity target ``eps - x0`` -> the policy's velocity, the flow-matching loss, in
micro-batches -> an optimizer step of the backend. The math lives in ``lyra_rl.algorithms.sft``; the
machinery (checkpoints, ``--resume``, evaluation, logging) in :class:`Trainer`. The trained weights are
whatever the policy trains: the whole DiT (``train_transformer``), LoRA adapters and/or camera modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..algorithms.sft import flow_matching_loss, noised_sample, shifted_timesteps
from ..data.conditions import ConditionBatch
from ..rollout import micro_batches
from .config import TrainingConfig
from .metrics import Curve, MicroBatchMetrics, reduce_metrics, timed_phase
from .trainer import Trainer, seeded


@dataclass
class SFTConfig(TrainingConfig):
    """SFT's arguments: :class:`TrainingConfig`'s (``shift`` also sets the training times' distribution)."""

    output_dir: str = field(default="outputs/sft", metadata={"help": "Run folder: checkpoints, logs, samples."})


class SFTTrainer(Trainer):
    """Runs :class:`SFTConfig` on a policy and its trained weights; the reward set scores held-out samples."""

    name = "SFT"
    trains_on_videos = True
    curve = Curve("loss_curve.png", "loss", "flow-matching loss", "eval/loss")

    def progress_postfix(self, logged: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{logged['loss']:.4f}"}

    def training_step(self) -> dict[str, float]:
        config, policy, device = self.config, self.policy, self.accelerator.device
        timings: dict[str, float] = {}
        with timed_phase("conditions", timings):
            batch = self.conditions(self.step_indices())
            cond, _ = self.policy_conditions(batch)
            x0 = self.targets(batch)
            noise, t = self.noise_and_timesteps(batch.ids, 5, self.step)
            x_t, target = noised_sample(x0, noise.to(device), t.to(device))
        metrics: MicroBatchMetrics = {}
        with timed_phase("update", timings):
            for part in micro_batches(len(x0), config.train_micro_batch_size):
                with self.autocast():
                    velocity = policy.velocity(x_t[part], t[part].to(device), cond[part])
                loss = flow_matching_loss(velocity, target[part])
                self.accumulate(metrics, loss, (part.stop - part.start) / len(x0))
            grad_norm = self.optimizer_step()
        return {**reduce_metrics(self.accelerator, metrics), **timings, "grad_norm": float(grad_norm)}

    def targets(self, batch: ConditionBatch) -> torch.Tensor:
        """The latents ``x0 (B, C, k, h, w)`` the policy generates for the batch's true videos: cached
        (``batch.latents``, ``recipes/preprocess.py``) or encoded here."""
        device = self.accelerator.device
        if batch.latents is None:
            return self.policy.generated_latents(batch.videos.to(device)).float()
        if tuple(batch.latents.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(
                f"cached latents have shape {tuple(batch.latents.shape[1:])}, the policy generates "
                f"{tuple(self.latent_shape)}: preprocess the clips with this run's policy"
            )
        return batch.latents.to(device).float()

    def noise_and_timesteps(self, ids: torch.Tensor, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(B, C, T', H', W')`` and training times ``(B,)`` from the seed, ``key`` (a purpose and, in
        training, the step) and global indices only."""
        generators = [seeded(self.config.seed, *key, int(i)) for i in ids]
        noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators])
        t = torch.cat([shifted_timesteps(1, self.config.shift, generator=g) for g in generators])
        return noise, t

    @torch.no_grad()
    def evaluate(self, sample_dir=None) -> dict[str, float]:
        """The shared evaluation (held-out samples, their rewards) and ``eval/loss``: the flow-matching loss of
        the held-out conditions' true videos at noise and times fixed by their indices, comparable across
        steps. Every process must call this (see :meth:`Trainer.evaluate`)."""
        config, accelerator = self.config, self.accelerator
        indices = list(range(config.eval_conditions))[accelerator.process_index :: accelerator.num_processes]
        sampled = indices or ([0] if self.backend.joins_every_forward and config.eval_conditions else [])
        total = torch.zeros(2, device=accelerator.device)  # sum of the losses, count
        if sampled:
            batch = self.conditions(sampled, held_out=True)
            cond, _ = self.policy_conditions(batch)
            x0 = self.targets(batch)
            noise, t = self.noise_and_timesteps(batch.ids, 6)
            x_t, target = noised_sample(x0, noise.to(x0.device), t.to(x0.device))
            with self.autocast():
                velocity = self.policy.velocity(x_t, t.to(x0.device), cond)
            self.backend.release(self.policy)
            for k in range(len(indices)):
                total += torch.stack(
                    [flow_matching_loss(velocity[k : k + 1], target[k : k + 1]), torch.tensor(1.0)]
                ).to(total)
        loss_sum, count = accelerator.reduce(total, "sum").tolist()
        return {**super().evaluate(sample_dir), "eval/loss": loss_sum / count if count else math.nan}
