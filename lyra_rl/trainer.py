"""GRPO fine-tuning of a video policy's LoRA adapters under Accelerate (Flow-GRPO for video world models).

One step: conditions -> SDE rollouts with log-probs (no grad) -> decode -> rewards -> group-relative
advantages (over the group gathered from every process) -> for each inner epoch and trained denoising
step: replay the stored transition, clipped ratio loss (+ KL to the adapter-disabled reference) ->
gradient all-reduce, clipping, optimizer step. The math lives in ``sampling`` and ``algorithms.grpo``;
this module is the glue, plus logging and atomic checkpoints. Launched with accelerate's FSDP settings, the
policy's blocks are sharded over the processes (``sharding``); with DeepSpeed's, the trained weights'
gradients and optimizer state are partitioned (``zero``).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
from torch.profiler import record_function
from tqdm import tqdm

from .camera import Cameras
from .algorithms.grpo import REWARD_SCALINGS, group_advantages, grpo_loss, select_timesteps, sde_step_mask
from .data.conditions import ConditionBatch, procedural_conditions, read_conditions, user_conditions
from .reward import RewardSet
from .rollout import guided_velocity, micro_batches, rollout
from .sampling import gaussian_kl, sde_step, shifted_sigmas
from .sharding import (adamw, clip_grad_norm_, fsdp_plugin, full_state, full_tensor, reshard, shard_like,
                       shard_optimizer_state)
from .video import camera_path_video, write_video
from .zero import full_optimizer_state, load_full_optimizer_state, zero_engine


LR_SCHEDULES = ("constant", "linear", "cosine")


def learning_rate_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based): a linear warm-up through
    ``(k + 1) / (warmup_steps + 1)`` (the first step already moves the weights), then ``schedule`` from 1
    to 0 over the remaining steps (``constant`` stays at 1)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule]


@dataclass
class GRPOConfig:
    """Arguments of GRPO training (names follow trl's ``GRPOConfig`` where they mean the same).

    > Model: policy, camera_layout, num_experts, expert, wan_model_path, dit_path, prompt_embeddings, mixed_precision,
      gradient_checkpointing, offload_vae, lora_r, lora_alpha, lora_target_modules, train_camera_modules.
    > Data: conditions, num_frames, height, width, conditions_per_step (per process), num_generations (group size).
    > Sampling: num_sampling_steps, shift, noise_level, guidance_scale, negative_prompt, train_timestep_fraction,
      train_timestep_window.
    > Loss: beta (KL), epsilon (clip range), scale_rewards, num_iterations (inner epochs), train_micro_batch_size.
    > Optimisation: learning_rate, weight_decay, lr_scheduler_type, warmup_steps, max_grad_norm, max_steps, seed.
    > Rewards: rewards, reward_weights, reward_kwargs, reward_workers.
    > Evaluation: eval_conditions, eval_sampling_steps (every save_steps).
    > Output: output_dir, logging_steps, save_steps, resume.
    """

    output_dir: str = field(default="outputs/grpo", metadata={"help": "Run folder: checkpoints, logs, samples."})
    policy: str = field(default="tiny", metadata={"help": "Policy architecture: 'tiny' or 'wan2.1-1.3b'."})
    camera_layout: str = field(default="recammaster", metadata={"help": "Camera modules: 'recammaster' (per-block cam_encoder) or 'astra' (Astra's mixture of experts; its --dit_path needs it)."})
    num_experts: int = field(default=3, metadata={"help": "Camera experts per block (astra layout)."})
    expert: int = field(default=0, metadata={"help": "The expert routed to (astra layout; 0 = Astra's camera-control default)."})
    wan_model_path: str | None = field(default=None, metadata={"help": "Wan2.1 weights folder (diffusers or original layout)."})
    dit_path: str | None = field(default=None, metadata={"help": "Fine-tuned DiT with camera modules (.safetensors/.ckpt), e.g. Astra's."})
    prompt_embeddings: str | None = field(default=None, metadata={"help": "Precomputed prompt embeddings (recipes/encode_prompts.py); the text encoder is then not loaded."})
    mixed_precision: str | None = field(default=None, metadata={"help": "'no' or 'bf16' (default: accelerate's config): frozen DiT weights in bf16, trained ones in float32, forward passes under autocast."})
    offload_vae: bool = field(default=False, metadata={"help": "Keep the VAE on the CPU between encode/decode calls (frees accelerator memory for the update)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute the DiT blocks' activations in the backward pass (less memory, about 1/3 more update time)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
        metadata={"help": "Module names that get LoRA adapters."},
    )
    train_camera_modules: bool = field(default=True, metadata={"help": "Also train the camera modules (encoders or Astra's processor and routed expert, projectors)."})
    conditions: str = field(default="procedural", metadata={"help": "'procedural', a .jsonl manifest, or a folder of images with <stem>.txt prompts."})
    num_frames: int = field(default=9, metadata={"help": "Frames per video (4k+1)."})
    height: int = field(default=32, metadata={"help": "Frame height (multiple of 16)."})
    width: int = field(default=48, metadata={"help": "Frame width (multiple of 16)."})
    conditions_per_step: int = field(default=2, metadata={"help": "Conditions per process and step."})
    num_generations: int = field(default=4, metadata={"help": "Rollouts per condition (the GRPO group)."})
    num_sampling_steps: int = field(default=8, metadata={"help": "Denoising steps of a training rollout."})
    shift: float = field(default=5.0, metadata={"help": "Flow-matching timestep shift (Wan uses 5)."})
    noise_level: float = field(default=0.7, metadata={"help": "Flow-GRPO SDE noise level a."})
    guidance_scale: float = field(default=1.0, metadata={"help": "Classifier-free guidance weight of rollouts and updates (1 = no guidance, one forward pass per step)."})
    negative_prompt: str = field(default="", metadata={"help": "Prompt of the unconditional branch when guidance_scale != 1."})
    train_timestep_fraction: float = field(default=0.5, metadata={"help": "Fraction of denoising steps trained (SDE), drawn at random each step (DanceGRPO); the rest run the ODE."})
    train_timestep_window: int | None = field(default=None, metadata={"help": "Instead of a random fraction, train a window of this many consecutive steps that slides by one each GRPO step (MixGRPO)."})
    beta: float = field(default=0.004, metadata={"help": "KL coefficient to the adapter-disabled reference (0 skips the reference)."})
    epsilon: float = field(default=1e-3, metadata={"help": "PPO clip range of the ratio."})
    scale_rewards: str = field(default="group", metadata={"help": "Advantage scaling, as trl's: 'group' (divide by the group's reward std), 'batch' (by the whole batch's) or 'none' (only centre); true and false mean 'group' and 'none'."})
    num_iterations: int = field(default=1, metadata={"help": "Inner epochs over each batch of rollouts."})
    train_micro_batch_size: int | None = field(default=None, metadata={"help": "Rollouts per forward pass of the rollout and forward/backward pass of the update, gradients accumulated over the local batch (default: all at once)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (it would pull the identity-initialised camera projectors and loaded camera modules towards 0)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule over the optimizer steps after the warm-up: constant, linear or cosine (to 0)."})
    warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps of linear warm-up (the first one at 1/(warmup_steps+1) of the rate)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    max_steps: int = field(default=20, metadata={"help": "GRPO steps."})
    seed: int = field(default=0, metadata={"help": "Seed of conditions, noise and initial weights."})
    rewards: list[str] = field(default_factory=lambda: ["pose_consistency", "epipolar"], metadata={"help": "Reward names or module:Class paths."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward."})
    reward_kwargs: dict | str | None = field(default=None, metadata={"help": "Per-reward options {name: {option: value}} (YAML mapping or JSON)."})
    reward_workers: int = field(default=0, metadata={"help": "Reward worker processes per training process."})
    eval_conditions: int = field(default=2, metadata={"help": "Held-out conditions sampled every save_steps, the same each time (procedural: scenes of seed + 1; user conditions: the last ones, not trained on); 0 turns evaluation off."})
    eval_sampling_steps: int = field(default=20, metadata={"help": "Denoising steps of the evaluation samples (deterministic ODE): more than a training rollout's."})
    logging_steps: int = field(default=1, metadata={"help": "Log scalars every N steps."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every N steps (and at the end)."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last complete checkpoint in output_dir."})

    def __post_init__(self) -> None:
        if isinstance(self.reward_kwargs, str):
            self.reward_kwargs = json.loads(self.reward_kwargs)
        scale = str(self.scale_rewards).lower()  # YAML booleans and command-line words alike, as trl takes them
        self.scale_rewards = {"true": "group", "false": "none"}.get(scale, scale)
        if self.scale_rewards not in REWARD_SCALINGS:
            raise ValueError(f"scale_rewards must be one of {REWARD_SCALINGS}, got {self.scale_rewards!r}")
        if (self.num_frames - 1) % 4 or self.num_frames < 5:
            raise ValueError(f"num_frames must be 4k+1 with k >= 1 (the VAE compresses time 4x), got {self.num_frames}")
        if self.train_micro_batch_size is not None and self.train_micro_batch_size < 1:
            raise ValueError(f"train_micro_batch_size must be >= 1, got {self.train_micro_batch_size}")
        if self.lr_scheduler_type not in LR_SCHEDULES or self.warmup_steps < 0:
            raise ValueError(f"lr_scheduler_type must be one of {LR_SCHEDULES} and warmup_steps >= 0")
        if self.eval_conditions < 0 or self.eval_sampling_steps < 1:
            raise ValueError("eval_conditions must be >= 0 and eval_sampling_steps >= 1")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"height and width must be multiples of 16 (8x VAE, 2x2 patches), got {self.height}x{self.width}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: group-relative advantages need at least two rollouts")
        if self.train_timestep_window is not None and not 1 <= self.train_timestep_window <= self.num_sampling_steps:
            raise ValueError(f"train_timestep_window must be in [1, num_sampling_steps], got {self.train_timestep_window}")
        if self.mixed_precision not in (None, "no", "bf16"):  # fp16 would need loss scaling
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if not 0 < self.train_timestep_fraction <= 1:
            raise ValueError(f"train_timestep_fraction must be in (0, 1], got {self.train_timestep_fraction}")


@contextmanager
def timed_phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Times a phase of a step into ``timings["time/<name>"]`` and labels it ``grpo/<name>`` for torch.profiler."""
    start = time.perf_counter()
    with record_function(f"grpo/{name}"):
        yield
    timings[f"time/{name}"] = time.perf_counter() - start


def _numpy_rng_state() -> tuple:
    """numpy's global RNG state with plain ints for its key, so that checkpoints load with ``weights_only=True``."""
    name, key, *rest = np.random.get_state()
    return (name, key.tolist(), *rest)


def _set_numpy_rng_state(state: tuple) -> None:
    name, key, *rest = state
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))


def _seeded(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(key) % (2**63))


class GRPOTrainer:
    """Runs :class:`GRPOConfig` on a policy with LoRA adapters and a reward set."""

    def __init__(self, config: GRPOConfig, policy, reward_set: RewardSet, accelerator: Accelerator):
        self.config, self.policy, self.reward_set, self.accelerator = config, policy, reward_set, accelerator
        plugin = fsdp_plugin(accelerator)
        self.sharded = plugin is not None
        if self.sharded:
            if not hasattr(policy, "shard"):
                raise ValueError(f"{type(policy).__name__} has no shard(): launch without FSDP")
            policy.shard(plugin.reshard_after_forward)
        self.trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = adamw(self.trainable, config.learning_rate, config.weight_decay)
        total = config.max_steps * config.num_iterations  # optimizer steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: learning_rate_factor(k, config.lr_scheduler_type, config.warmup_steps, total)
        )
        self.engine = None  # DeepSpeed's, under a DeepSpeed launch: it reduces, clips and steps (``zero``)
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            rollouts_per_process = config.conditions_per_step * config.num_generations
            self.engine = zero_engine(accelerator, self.trainable, self.optimizer, config.max_grad_norm, rollouts_per_process)
        self.sigmas = shifted_sigmas(config.num_sampling_steps, config.shift)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.output_dir = Path(config.output_dir)
        self.entries = self.eval_entries = None
        if config.conditions != "procedural":  # the last eval_conditions entries are held out for evaluation
            entries = read_conditions(config.conditions)
            if len(entries) <= config.eval_conditions:
                raise ValueError(f"{config.conditions} has {len(entries)} conditions: at least eval_conditions + 1 = "
                                 f"{config.eval_conditions + 1} are needed (the last {config.eval_conditions} are held out)")
            split = len(entries) - config.eval_conditions
            self.entries, self.eval_entries = entries[:split], entries[split:]

    def autocast(self):
        """bf16 autocast when the launch's mixed precision is bf16 (accelerate's own does nothing under
        DeepSpeed, whose bf16 mode, which casts the trained weights too, the trainer switches off)."""
        return torch.autocast(self.accelerator.device.type, torch.bfloat16, enabled=self.accelerator.mixed_precision == "bf16")

    def _global_indices(self) -> list[int]:
        per_process = self.config.conditions_per_step
        start = (self.step * self.accelerator.num_processes + self.accelerator.process_index) * per_process
        return list(range(start, start + per_process))

    def _noise(self, ids: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial noise shared within each group and per-sample SDE noise, from global indices only."""
        group_size, steps = self.config.num_generations, self.config.num_sampling_steps
        initial = torch.stack([torch.randn(shape, generator=_seeded(self.config.seed, 1, int(i))) for i in ids])
        initial = initial.repeat_interleave(group_size, dim=0)
        sample_ids = [(int(i), g) for i in ids for g in range(group_size)]
        step_noise = torch.stack([torch.randn((steps, *shape), generator=_seeded(self.config.seed, 2, self.step, i, g)) for i, g in sample_ids], dim=1)
        return initial, step_noise

    def _train_steps(self) -> torch.Tensor:
        config = self.config
        if config.train_timestep_window is not None:
            size = config.train_timestep_window
            return select_timesteps(config.num_sampling_steps, window=(self.step % (config.num_sampling_steps - size + 1), size))
        return select_timesteps(config.num_sampling_steps, config.train_timestep_fraction, generator=_seeded(config.seed, 3, self.step))

    def _conditions(self, indices: list[int], held_out: bool) -> ConditionBatch:
        config = self.config
        size = (config.num_frames, config.height, config.width)
        if self.entries is None:
            return procedural_conditions(config.seed + held_out, indices, *size)
        return user_conditions(self.eval_entries if held_out else self.entries, indices, *size)

    def _condition(self, batch: ConditionBatch, repeats: int):
        """The policy's conditions (each repeated ``repeats`` times) and, with guidance, the negative prompt's."""
        config, policy = self.config, self.policy
        cond = policy.condition(batch.images, batch.prompts, batch.cameras)
        if config.guidance_scale == 1.0:
            return cond.repeat(repeats), None
        uncond = policy.with_prompts(cond, [config.negative_prompt] * len(batch.prompts))
        return cond.repeat(repeats), uncond.repeat(repeats)

    def train_step(self) -> dict[str, float]:
        config, accelerator, policy = self.config, self.accelerator, self.policy
        device = accelerator.device
        timings: dict[str, float] = {}
        with timed_phase("conditions", timings):
            batch = self._conditions(self._global_indices(), held_out=False)
            cond, uncond = self._condition(batch, config.num_generations)
            latent_shape = policy.latent_shape(config.num_frames, config.height, config.width)
            initial, step_noise = self._noise(batch.ids, latent_shape)
            train_steps = self._train_steps()
            sde_mask = sde_step_mask(config.num_sampling_steps, train_steps)
        with timed_phase("rollout", timings), self.autocast():
            result = rollout(policy, cond, initial.to(device), self.sigmas.to(device), sde_mask, config.noise_level,
                             step_noise.to(device), uncond, config.guidance_scale, config.train_micro_batch_size)
            reshard(policy)
        with timed_phase("decode", timings):
            videos = policy.decode(result.states[-1], cond)
        with timed_phase("reward", timings):
            cameras = Cameras(
                batch.cameras.cam_from_world.repeat_interleave(config.num_generations, 0),
                batch.cameras.intrinsics.repeat_interleave(config.num_generations, 0),
            )
            prompts = [p for p in batch.prompts for _ in range(config.num_generations)]
            images = batch.images.repeat_interleave(config.num_generations, 0)
            scores = self.reward_set(videos.float().cpu(), cameras, prompts, images=images)

        local = len(prompts)
        group_ids = batch.ids.repeat_interleave(config.num_generations)
        all_rewards = accelerator.gather(scores.total.to(device)).cpu()
        all_groups = accelerator.gather(group_ids.to(device)).cpu()
        advantages_all = group_advantages(all_rewards, all_groups, scale=config.scale_rewards)
        offset = accelerator.process_index * local
        advantages = advantages_all[offset : offset + local].to(device)
        self.last_advantages = advantages_all

        learning_rate = self.lr_scheduler.get_last_lr()[0]  # what this step's (first) optimizer step uses
        with timed_phase("update", timings):
            metrics, grad_norm = self._update(result, train_steps, cond, uncond, advantages)

        self.step += 1
        logged = {}
        for name, pairs in metrics.items():  # over micro-batches (weighted by size), trained steps and processes
            values, shares = torch.tensor(pairs).T
            if name.endswith(("_min", "_max")):
                reduce = torch.amin if name.endswith("_min") else torch.amax
                logged[name] = float(reduce(accelerator.gather(reduce(values)[None].to(device))))
            else:
                logged[name] = float(accelerator.gather(((values * shares).sum() / shares.sum())[None].to(device)).mean())
        logged.update(timings)
        logged["grad_norm"] = float(grad_norm)
        logged["learning_rate"] = learning_rate
        logged["reward/total"] = float(all_rewards.nanmean())
        for name, values in scores.rewards.items():
            logged[f"reward/{name}"] = float(accelerator.gather(values.to(device)).nanmean())
        for name, values in scores.failed.items():
            logged[f"failed/{name}"] = float(accelerator.gather(values.float().to(device)).mean())
        for name, values in scores.diagnostics.items():
            logged[f"diagnostics/{name}"] = float(accelerator.gather(values.to(device)).nanmean())
        logged["step"] = self.step
        self.history.append(logged)
        return logged

    def _update(self, result, train_steps: torch.Tensor, cond, uncond, advantages: torch.Tensor) -> tuple[dict[str, list[tuple[float, float]]], torch.Tensor]:
        """Inner epochs over the trained steps of the rollouts, in micro-batches: replayed SDE steps, clipped loss
        (+ KL to the adapter-disabled reference), gradients accumulated over micro-batches and steps, then an
        optimizer step per epoch."""
        config, local = self.config, len(advantages)
        micro = config.train_micro_batch_size or local
        metrics: dict[str, list[tuple[float, float]]] = {}  # name -> (value, share of the batch) per micro-batch
        for _ in range(config.num_iterations):
            for k in train_steps.tolist():
                for part in micro_batches(local, micro):
                    loss, step_metrics = self._step_loss(
                        result, k, part, cond[part], None if uncond is None else uncond[part], advantages[part]
                    )
                    share = (part.stop - part.start) / local  # the loss is a mean over the micro-batch
                    self._backward(loss * share / len(train_steps))
                    for name, value in {"loss": loss, **step_metrics}.items():
                        metrics.setdefault(name, []).append((float(value.detach()), share))
            grad_norm = self._optimizer_step()
            self.lr_scheduler.step()
        return metrics, grad_norm

    def _backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already scaled for accumulation
        else:
            loss.backward()

    def _optimizer_step(self) -> torch.Tensor:
        """Averages the accumulated gradients over processes, clips them at ``max_grad_norm``, steps the optimizer
        and clears them; returns their norm before clipping."""
        if self.engine is not None:
            self.engine.step()
            return torch.as_tensor(self.engine.get_global_grad_norm())
        self._all_reduce_gradients()
        grad_norm = clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _step_loss(self, result, k: int, part: slice, cond, uncond, advantages: torch.Tensor):
        """The GRPO loss of denoising step ``k`` for the rollouts ``part``: the stored transition replayed under
        the current policy, clipped ratio against its rollout log-prob, KL to the adapter-disabled reference."""
        config, accelerator, policy = self.config, self.accelerator, self.policy
        x, x_next = result.states[k][part], result.states[k + 1][part]
        t = self.sigmas[k].expand(len(x)).to(x.device)
        sigma, sigma_next = self.sigmas[k], self.sigmas[k + 1]
        with self.autocast():
            velocity = guided_velocity(policy, x, t, cond, uncond, config.guidance_scale)
        step = sde_step(x, velocity, sigma, sigma_next, config.noise_level, prev_sample=x_next)
        kl = None
        if config.beta > 0:
            with torch.no_grad(), policy.adapters_disabled(), self.autocast():
                reference_velocity = guided_velocity(policy, x, t, cond, uncond, config.guidance_scale)
                reference = sde_step(x, reference_velocity, sigma, sigma_next, config.noise_level, prev_sample=x_next)
            kl = gaussian_kl(step.mean, reference.mean, step.std)
        old_log_prob = result.log_probs[part, k].to(accelerator.device)
        return grpo_loss(step.log_prob, old_log_prob, advantages, config.epsilon, kl, config.beta)

    def _all_reduce_gradients(self) -> None:
        """Averages the gradients of the replicated trained weights over processes (FSDP already reduced the
        shards' gradients)."""
        if self.accelerator.num_processes == 1:
            return
        for param in self.trainable:
            if isinstance(param, DTensor):
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad = self.accelerator.reduce(param.grad, "mean")

    @torch.no_grad()
    def evaluate(self, sample_dir: Path | None = None) -> dict[str, float]:
        """Deterministic samples of the held-out conditions (ODE, ``eval_sampling_steps``, fixed noise), their
        mean rewards as ``eval/...``, and, with ``sample_dir``, each sample as an mp4 with its camera paths.

        Every process samples its share of the conditions (``indices[rank::world]``); the means are reduced
        over all of them, so each process must call this. With sharded weights, a process without a share
        samples the first condition anyway (each block's all-gather needs every process) and drops it.
        """
        config, policy, accelerator = self.config, self.policy, self.accelerator
        device = accelerator.device
        indices = list(range(config.eval_conditions))[accelerator.process_index :: accelerator.num_processes]
        sampled = indices or ([0] if self.sharded and config.eval_conditions else [])
        sums: dict[str, torch.Tensor] = {}
        if sampled:
            batch = self._conditions(sampled, held_out=True)
            cond, uncond = self._condition(batch, 1)
            shape = policy.latent_shape(config.num_frames, config.height, config.width)
            noise = torch.stack([torch.randn(shape, generator=_seeded(config.seed, 4, i)) for i in sampled]).to(device)
            ode = torch.zeros(config.eval_sampling_steps, dtype=torch.bool)
            sigmas = shifted_sigmas(config.eval_sampling_steps, config.shift).to(device)
            with self.autocast():
                result = rollout(policy, cond, noise, sigmas, ode, 0.0, None, uncond, config.guidance_scale)
            reshard(policy)
            if indices:
                videos = policy.decode(result.states[-1], cond).float().cpu()
                scores = self.reward_set(videos, batch.cameras, batch.prompts, images=batch.images)
                for name, values in {"total": scores.total, **scores.rewards}.items():
                    finite = values[~values.isnan()]
                    sums[name] = torch.tensor([float(finite.sum()), len(finite)])
                if sample_dir is not None:
                    for k, (index, video) in enumerate(zip(indices, videos)):
                        self.write_sample(sample_dir / f"step-{self.step}-{index}.mp4", video, batch.cameras[k])
        names = ["total", *(r.name for r in self.reward_set.rewards)]
        local = torch.stack([sums.get(name, torch.zeros(2)) for name in names]).to(device)
        total = accelerator.reduce(local, "sum").cpu()
        return {f"eval/reward/{name}": float(s / n) if n else math.nan for name, (s, n) in zip(names, total.tolist())}

    def write_sample(self, path: Path, video: torch.Tensor, cameras: Cameras) -> Path:
        """``video (T, 3, H, W)`` as an mp4 with its commanded camera path and, where a reward of the set can
        estimate cameras (``estimate_trajectory``, as ``pose_consistency`` does), the estimated one."""
        cam_from_world, intrinsics = cameras.cam_from_world[0], cameras.intrinsics[0]
        paths = {"commanded": cam_from_world}
        estimator = next((r for r in self.reward_set.rewards if hasattr(r, "estimate_trajectory")), None)
        if estimator is not None:
            estimated = estimator.estimate_trajectory(video, cam_from_world, intrinsics)
            if estimated is not None:
                paths["estimated"] = estimated
        return write_video(path, camera_path_video(video, paths))

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """A snapshot of the trained weights (LoRA and, if trained, the camera modules), whole and on the CPU
        (sharded weights are gathered: every process must call this)."""
        return {key: full_tensor(param.detach()).to("cpu", copy=True).contiguous()
                for key, param in self.policy.trained_parameters().items()}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads what :meth:`trained_state_dict` returned (sharded weights take their shard); a missing or
        unexpected key is an error naming it."""
        params = self.policy.trained_parameters()
        missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit the trained weights: {len(missing)} missing (e.g. {missing[:2]}), "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(shard_like(value.to(params[key].dtype), params[key]))
        if self.engine is not None:
            self.engine.optimizer.refresh_fp32_params()  # ZeRO steps its own float32 copy of its partition

    def _optimizer_state_dict(self) -> dict:
        """The optimizer's ``state_dict()``, whole and on the CPU, whatever the launch sharded."""
        if self.engine is not None:
            return full_optimizer_state(self.optimizer, self.trainable)
        return full_state(self.optimizer.state_dict())

    def save_checkpoint(self) -> Path:
        """Writes ``checkpoint-<step>`` atomically (temporary folder, then rename): the trained weights as the
        policy saves them (Wan: the LoRA as diffusers does, the camera modules beside it) and the optimizer
        state, all whole, so a run resumes on any number of processes."""
        final = self.output_dir / f"checkpoint-{self.step}"
        trained, optimizer = self.trained_state_dict(), self._optimizer_state_dict()
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return final
        tmp = self.output_dir / f".tmp-checkpoint-{self.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.policy.save_trained_weights(tmp, trained)
        torch.save({
            "optimizer": optimizer, "lr_scheduler": self.lr_scheduler.state_dict(),
            "step": self.step, "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
            "config": asdict(self.config),
        }, tmp / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Continues from what :meth:`save_checkpoint` wrote: weights, optimizer and schedule, step, history, RNGs."""
        # the training state first: a file that does not load leaves the weights as they were
        trainer_state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.load_trained_state_dict(self.policy.read_trained_weights(path))
        if self.engine is not None:
            load_full_optimizer_state(self.engine, self.optimizer, self.trainable, trainer_state["optimizer"])
        else:
            self.optimizer.load_state_dict(shard_optimizer_state(trainer_state["optimizer"], self.optimizer))
        self.lr_scheduler.load_state_dict(trainer_state["lr_scheduler"])
        self.step, self.history = trainer_state["step"], trainer_state["history"]
        torch.set_rng_state(trainer_state["rng"]["torch"])
        _set_numpy_rng_state(trainer_state["rng"]["numpy"])
        random.setstate(trainer_state["rng"]["python"])

    def train(self) -> list[dict[str, float]]:
        config, accelerator = self.config, self.accelerator
        if config.resume:
            checkpoint = latest_checkpoint(self.output_dir)
            if checkpoint is not None:
                self.load_checkpoint(checkpoint)
        writer = None
        if accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(self.output_dir / "logs")
        progress = tqdm(total=config.max_steps, initial=self.step, desc="GRPO", disable=not accelerator.is_main_process)
        while self.step < config.max_steps:
            logged = self.train_step()
            progress.update(1)
            progress.set_postfix(reward=f"{logged['reward/total']:.3f}", kl=f"{logged.get('kl', 0.0):.2e}")
            if writer is not None and self.step % config.logging_steps == 0:
                for name, value in logged.items():
                    if name != "step" and math.isfinite(value):
                        writer.add_scalar(name, value, self.step)
            if self.step % config.save_steps == 0 or self.step == config.max_steps:
                self.save_checkpoint()
                if config.eval_conditions:
                    evaluation = self.evaluate(self.output_dir / "samples")
                    logged.update(evaluation)
                    for name, value in evaluation.items():
                        if writer is not None and math.isfinite(value):
                            writer.add_scalar(name, value, self.step)
        progress.close()
        if writer is not None:
            writer.close()
            plot_reward_curve(self.history, self.output_dir / "reward_curve.png")
        return self.history


def plot_reward_curve(history: list[dict[str, float]], path: Path) -> Path:
    """Mean reward per step (total and each reward of the rollouts, and the held-out evaluation's total) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for name in [k for k in history[0] if k.startswith("reward/")]:
        ax.plot(steps, [h[name] for h in history], label=name.removeprefix("reward/"))
    evaluated = [h for h in history if "eval/reward/total" in h]
    if evaluated:
        ax.plot([h["step"] for h in evaluated], [h["eval/reward/total"] for h in evaluated], "k--o", markersize=3,
                label="total, held-out (ODE)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (temporary folders of a crash are ignored)."""
    checkpoints = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.pt").is_file()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[1]), default=None)
