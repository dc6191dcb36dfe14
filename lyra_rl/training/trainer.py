"""The machinery every trainer shares: the accelerator and its distributed backend, the optimizer and its
learning-rate schedule, the conditions with their held-out split, the loop with its progress bar, logging
(TensorBoard and the reward curve), atomic checkpoints with ``--resume``, and held-out evaluation.

Faults: a step whose loss or gradient norm is not finite is skipped (no optimizer step, the schedule stays
where it was, counted as ``skipped_steps``), so no NaN reaches the weights; each checkpoint is read back and
checked before it becomes the latest; ``--resume`` passes over a checkpoint that does not load, with a
warning, to the one before it; a fresh run refuses an ``output_dir`` a run already wrote into.

An algorithm subclasses :class:`Trainer` with its config and its step (:meth:`Trainer.training_step`) alone
(see ``lyra_rl.training.grpo``); its loss is a pure function in ``lyra_rl.algorithms``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from ..camera import Cameras
from ..data.conditions import ConditionBatch, ConditionSource
from ..errors import InputError
from ..evaluate import comparison_table, path_estimator
from ..policy import VideoPolicy
from ..reward import RewardSet
from ..rollout import ode_sample
from ..video import camera_path_video, write_video
from .checkpoint import (
    TRAINER_STATE,
    CheckpointError,
    check_output_dir,
    complete_checkpoints,
    latest_checkpoint,
    load_trained_weights,
    read_trainer_state,
    remove_previous_outputs,
    rng_state,
    set_rng_state,
    verify_checkpoint,
    write_checkpoint,
)
from .config import TrainingConfig, learning_rate_factor, weight_dtype
from .distributed import StepSettings, distributed_backend, make_accelerator
from .metrics import Curve, MicroBatchMetrics, TensorBoard, plot_curves

logger = logging.getLogger(__name__)


def seeded(*key: int) -> torch.Generator:
    """A CPU generator seeded by ``key`` alone (a run's seed, a purpose, global indices): the same draws
    whatever the number of processes."""
    return torch.Generator().manual_seed(hash(key) % (2**63))


def evaluation_noise(seed: int, latent_shape: Sequence[int], indices: Sequence[int]) -> torch.Tensor:
    """The initial noise ``(B, *latent_shape)`` of held-out samples ``indices`` under ``seed``: the same at every
    evaluation of a run and in ``lyra-rl evaluate`` (whose sampling seeds take the run's seed's place)."""
    return torch.stack([torch.randn(tuple(latent_shape), generator=seeded(seed, 4, i)) for i in indices])


def policy_conditions(
    policy: VideoPolicy, batch: ConditionBatch, guidance_scale: float, negative_prompt: str, repeats: int = 1
):
    """The policy's conditions of ``batch`` (each repeated ``repeats`` times) and, with guidance
    (``guidance_scale != 1``), the negative prompt's (else ``None``)."""
    cond = policy.condition(batch.images, batch.prompts, batch.cameras)
    if guidance_scale == 1.0:
        return cond.repeat(repeats), None
    uncond = policy.with_prompts(cond, [negative_prompt] * len(batch.prompts))
    return cond.repeat(repeats), uncond.repeat(repeats)


class Trainer:
    """Runs a :class:`TrainingConfig` on a policy (its trained weights: ``requires_grad``) and a reward set.

    Args:
        config: the run's config (an algorithm's subclass of :class:`TrainingConfig`).
        policy: a placed :class:`~lyra_rl.policy.VideoPolicy` (e.g. ``policies.build_policy``).
        reward_set: scores rollouts and held-out samples (``None``: an algorithm that needs no reward, as SFT,
            evaluates by its samples alone).
        accelerator: the launch's (default: :func:`~lyra_rl.training.distributed.make_accelerator`, on the
            policy's device).
        recorded_configs: the run's other configs (the policy's, the rewards'), recorded with ``config`` in
            every checkpoint's ``trainer_state.pt``.
    """

    #: The progress bar's label.
    name = "train"
    #: Whether the algorithm trains on the conditions' true videos (SFT), so the source must render them.
    trains_on_videos = False
    #: Whether the algorithm needs a reward set (GRPO ranks its rollouts by it).
    needs_rewards = False
    #: The PNG written at the end of training.
    curve = Curve("reward_curve.png", "reward/", "mean reward", "eval/reward/total")

    def __init__(
        self,
        config: TrainingConfig,
        policy: VideoPolicy,
        reward_set: RewardSet | None = None,
        accelerator: Accelerator | None = None,
        recorded_configs: Sequence = (),
    ):
        if self.requires_rewards(config) and reward_set is None:
            raise ValueError(
                f"{self.name} needs rewards to rank its rollouts: set rewards (e.g. --rewards pose_consistency)"
            )
        self.config, self.policy, self.reward_set = config, policy, reward_set
        self.recorded_config = {key: value for c in (*recorded_configs, config) for key, value in asdict(c).items()}
        if accelerator is None:  # the launch's, on the device the policy was placed on
            on_cpu = next(policy.parameters()).device.type == "cpu"
            accelerator = make_accelerator(config.mixed_precision, cpu=on_cpu)
        self.accelerator = accelerator
        weight_dtype(self.accelerator.mixed_precision)  # the launch's precision, where accelerate's config set it
        self.latent_shape = policy.latent_shape(config.num_frames, config.height, config.width)  # the policy's rules
        self.conditions = self.condition_source(config)
        self.backend = distributed_backend(
            self.accelerator,
            policy,
            StepSettings(config.learning_rate, config.weight_decay, config.max_grad_norm, self.samples_per_process()),
        )
        self.optimizer = self.backend.optimizer
        if config.final_evaluation_seeds:
            self.check_final_evaluation()
        total = config.max_steps * self.optimizer_steps_per_step()
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: learning_rate_factor(k, config.lr_scheduler_type, config.warmup_steps, total)
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.output_dir = Path(config.output_dir)
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient norm
        self._non_finite_loss = False  # since the last optimizer step, on this process

    @classmethod
    def requires_rewards(cls, config: TrainingConfig) -> bool:
        """Whether a run of ``config`` needs a reward set (:attr:`needs_rewards`, unless the algorithm says)."""
        return cls.needs_rewards

    @classmethod
    def condition_source(cls, config: TrainingConfig) -> ConditionSource:
        """The run's conditions, checked whole (every manifest entry, every clip) as they are built: a recipe
        builds them once before the policy, so that bad conditions are an error before anything is built."""
        return ConditionSource.from_config(config, cls.trains_on_videos)

    def samples_per_process(self) -> int:
        """Samples each process trains on per optimizer step."""
        return self.config.conditions_per_step

    def optimizer_steps_per_step(self) -> int:
        """Optimizer steps per training step (the learning-rate schedule's unit)."""
        return 1

    def training_step(self) -> dict[str, float]:
        """The algorithm's step: samples, scores, updates; returns its metrics (reduced over the processes)."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One :meth:`training_step`, logged with the step number, its learning rate and the number of optimizer
        steps skipped so far (``skipped_steps``) into ``history``."""
        learning_rate = self.lr_scheduler.get_last_lr()[0]  # what this step's (first) optimizer step uses
        logged = self.training_step()
        self.step += 1
        logged.update(learning_rate=learning_rate, step=self.step, skipped_steps=float(self.skipped_steps))
        self.history.append(logged)
        return logged

    def progress_postfix(self, logged: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {"reward": f"{logged.get('reward/total', math.nan):.3f}"}

    def autocast(self):
        """bf16 autocast when the launch's mixed precision is bf16 (accelerate's own does nothing under
        DeepSpeed, whose bf16 mode, which casts the trained weights too, the trainer switches off)."""
        return torch.autocast(
            self.accelerator.device.type, torch.bfloat16, enabled=self.accelerator.mixed_precision == "bf16"
        )

    def step_indices(self) -> list[int]:
        """Global indices of this process's conditions at the current step."""
        per_process = self.config.conditions_per_step
        start = (self.step * self.accelerator.num_processes + self.accelerator.process_index) * per_process
        return list(range(start, start + per_process))

    def policy_conditions(self, batch: ConditionBatch, repeats: int = 1):
        """The policy's conditions of ``batch`` (each repeated ``repeats`` times) and, with guidance, the
        negative prompt's (else ``None``)."""
        return policy_conditions(self.policy, batch, self.config.guidance_scale, self.config.negative_prompt, repeats)

    def accumulate(
        self, metrics: MicroBatchMetrics, loss: torch.Tensor, share: float, divisor: int = 1, **terms: torch.Tensor
    ) -> None:
        """Backpropagates ``loss * share / divisor`` (``share``: the micro-batch's share of the local batch, whose
        mean the loss is; ``divisor``: e.g. the number of steps accumulated) and records ``loss`` and ``terms``
        with their share in ``metrics`` (see :func:`~lyra_rl.training.metrics.reduce_metrics`). A non-finite
        ``loss`` makes the next :meth:`optimizer_step` a skipped one."""
        self.backend.backward(loss * share / divisor)
        for name, value in {"loss": loss, **terms}.items():
            metrics.setdefault(name, []).append((float(value.detach()), share))
        self._non_finite_loss = self._non_finite_loss or not math.isfinite(metrics["loss"][-1][0])

    def optimizer_step(self) -> torch.Tensor:
        """Reduces, clips and applies the accumulated gradients, advances the schedule; returns the gradient norm.

        A non-finite loss on any process (since the last optimizer step) or a non-finite gradient norm skips
        the step, as accelerate does for a step its loss scaler skips: the gradients are cleared, the weights,
        the optimizer state and the learning-rate schedule stay as they were (the schedule counts optimizer
        steps taken), ``skipped_steps`` counts it and a warning names the step.
        """
        non_finite_loss = self._non_finite_loss
        if self.accelerator.num_processes > 1:  # every process must skip alike
            flag = torch.tensor([float(non_finite_loss)], device=self.accelerator.device)
            non_finite_loss = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        self._non_finite_loss = False
        grad_norm = self.backend.step(skip=non_finite_loss)
        if non_finite_loss or not math.isfinite(float(grad_norm)):
            self.skipped_steps += 1
            if self.accelerator.is_main_process:
                cause = "loss" if non_finite_loss else f"gradient norm ({float(grad_norm)})"
                logger.warning(
                    "step %d: non-finite %s: optimizer step skipped (weights, optimizer state and learning-rate "
                    "schedule unchanged; %d skipped so far)",
                    self.step + 1,
                    cause,
                    self.skipped_steps,
                )
        else:
            self.lr_scheduler.step()
        return grad_norm

    def train(self) -> list[dict[str, float]]:
        """Trains to ``max_steps`` (from the last complete checkpoint with ``resume``), evaluating and
        checkpointing every ``save_steps`` and at the end; returns the logged history.

        A fresh run refuses an ``output_dir`` a run already wrote into, unless ``overwrite_output_dir`` (which
        deletes that run's outputs first); see :func:`~lyra_rl.training.checkpoint.check_output_dir`."""
        config = self.config
        main = self.accelerator.is_main_process
        if self.step == 0 and not config.resume:
            check_output_dir(self.output_dir, config.resume, config.overwrite_output_dir)
            if config.overwrite_output_dir and main:
                remove_previous_outputs(self.output_dir)
            self.accelerator.wait_for_everyone()
        if config.resume:
            self.resume()
        tensorboard = TensorBoard(self.output_dir / "logs", enabled=main)
        progress = tqdm(total=config.max_steps, initial=self.step, desc=self.name, disable=not main)
        while self.step < config.max_steps:
            logged = self.train_step()
            progress.update(1)
            progress.set_postfix(self.progress_postfix(logged))
            if self.step % config.logging_steps == 0:
                tensorboard.add(logged, self.step)
            if self.step % config.save_steps == 0 or self.step == config.max_steps:
                if config.eval_conditions:  # first, so that the checkpoint's history holds the evaluation
                    evaluation = self.evaluate(self.output_dir / "samples")
                    logged.update(evaluation)
                    tensorboard.add(evaluation, self.step)
                self.save_checkpoint()
            elif config.save_last_step:
                self.save_checkpoint(f"last-step-{self.step}")
        progress.close()
        tensorboard.close()
        if main and self.history:
            plot_curves(self.history, self.output_dir / self.curve.file_name, self.curve)
            self.report()
            if config.final_evaluation_seeds:
                self.evaluate_before_after()
        return self.history

    def check_final_evaluation(self) -> None:
        """``final_evaluation_seeds`` needs adapters to disable, a reward that estimates camera paths and weights
        one process holds whole; a ``ValueError`` says which is missing."""
        if self.backend.joins_every_forward:
            raise ValueError(
                "final_evaluation_seeds: sharded weights sample on every process; evaluate the run afterwards "
                "(lyra-rl evaluate --config ... --checkpoint ... --before-after)"
            )
        if self.reward_set is None:
            raise ValueError("final_evaluation_seeds: evaluation needs rewards (pose_consistency among them)")
        path_estimator(self.reward_set)
        with self.policy.adapters_disabled():  # a policy without adapters raises ValueError here
            pass

    def evaluate_before_after(self) -> dict[str, dict[str, float]]:
        """What training changed, as ``lyra-rl evaluate --before-after`` measures it
        (:func:`~lyra_rl.evaluate_model.evaluate_before_after`): the held-out conditions under every seed of
        ``final_evaluation_seeds``, the policy with its adapters disabled and enabled, into
        ``output_dir/evaluation/``; prints and returns the comparison."""
        from ..evaluate_model import evaluate_before_after  # it samples with this module's evaluation noise

        config = self.config
        procedural = config.conditions == "procedural"
        comparison = evaluate_before_after(
            self.policy,
            ConditionSource.from_config(config, videos=procedural),
            self.reward_set,
            self.output_dir / "evaluation",
            num_conditions=config.eval_conditions,
            seeds=config.final_evaluation_seeds,
            num_sampling_steps=config.eval_sampling_steps,
            shift=config.shift,
            guidance_scale=config.guidance_scale,
            negative_prompt=config.negative_prompt,
            bf16=self.accelerator.mixed_precision == "bf16",
        )
        panels = "before | after | true render" if procedural else "before | after"
        print(f"Wrote {self.output_dir / 'evaluation'}/: comparison.md, before/, after/, videos/*.mp4 ({panels})")
        print(comparison_table(comparison))
        return comparison

    def resume(self) -> Path | None:
        """Loads the last checkpoint of ``output_dir`` that loads (:meth:`load_checkpoint`), passing over, with a
        warning naming the file, any after it that does not; returns it (``None``: no checkpoint, a fresh start).
        Raises :class:`~lyra_rl.errors.InputError` when there are checkpoints and none loads."""
        checkpoints, problems = complete_checkpoints(self.output_dir), []
        for k, checkpoint in enumerate(checkpoints):
            try:
                self.load_checkpoint(checkpoint)
                return checkpoint
            except CheckpointError as error:
                problems.append(str(error))
                if self.accelerator.is_main_process and k + 1 < len(checkpoints):
                    logger.warning("%s: resuming from %s, the previous complete checkpoint", error, checkpoints[k + 1])
        if problems:
            raise InputError(
                f"--resume: no checkpoint of {self.output_dir} loads ({problems[0]}); remove the broken ones or "
                "start afresh with --overwrite_output_dir true"
            )
        return None

    def report(self) -> None:
        """Prints where the run's outputs are, which rewards could not score a single rollout or gave NaN (not
        applicable) for every one, and how many optimizer steps were skipped."""
        checkpoint = latest_checkpoint(self.output_dir)
        outputs = (
            [f"{checkpoint.name}/ ({', '.join(sorted(p.name for p in checkpoint.iterdir()))})"] if checkpoint else []
        )
        outputs += ["samples/*.mp4"] if self.config.eval_conditions else []
        outputs += ["logs/ (tensorboard --logdir)", self.curve.file_name]
        print(f"Wrote {self.output_dir}/: {', '.join(outputs)}")
        for name in [k.removeprefix("failed/") for k in self.history[-1] if k.startswith("failed/")]:
            if all(h.get(f"failed/{name}") == 1.0 for h in self.history):
                print(
                    f"Note: {name} could not score any rollout (its floor every step, so no advantage to learn from): "
                    "the videos have no geometry it can estimate, as with the randomly initialised tiny policy"
                )
        for name in [k.removeprefix("reward/") for k in self.history[-1] if k.startswith("reward/")]:
            if name != "total" and all(math.isnan(h.get(f"reward/{name}", math.nan)) for h in self.history):
                print(f"Note: {name} returned NaN (not applicable) for every rollout: it never entered reward/total")
        if self.skipped_steps:
            print(
                f"Note: {self.skipped_steps} optimizer steps were skipped for a non-finite loss or gradient norm "
                "(skipped_steps; the warnings name the steps)"
            )

    @torch.no_grad()
    def evaluate(self, sample_dir: Path | None = None) -> dict[str, float]:
        """Deterministic samples of the held-out conditions (ODE, ``eval_sampling_steps``, fixed noise), their
        mean rewards as ``eval/reward/<name>``, and, with ``sample_dir``, each sample as an mp4 with its camera paths.

        Every process samples its share of the conditions (``indices[rank::world]``); the means are reduced
        over all of them, so each process must call this. With sharded weights, a process without a share
        samples the first condition anyway (each block's all-gather needs every process) and drops it.
        """
        config, policy, accelerator = self.config, self.policy, self.accelerator
        indices = list(range(config.eval_conditions))[accelerator.process_index :: accelerator.num_processes]
        sampled = indices or ([0] if self.backend.joins_every_forward and config.eval_conditions else [])
        sums: dict[str, torch.Tensor] = {}
        if sampled:
            batch = self.conditions(sampled, held_out=True)
            cond, uncond = self.policy_conditions(batch)
            noise = evaluation_noise(config.seed, self.latent_shape, sampled).to(accelerator.device)
            with self.autocast():
                latents = ode_sample(
                    policy, cond, noise, config.eval_sampling_steps, config.shift, uncond, config.guidance_scale
                )
            self.backend.release(policy)
            if indices:
                videos = policy.decode(latents, cond).float().cpu()
                if self.reward_set is not None:
                    scores = self.reward_set(videos, batch.cameras, batch.prompts, images=batch.images)
                    for name, values in {"total": scores.total, **scores.rewards}.items():
                        finite = values[~values.isnan()]
                        sums[name] = torch.tensor([float(finite.sum()), len(finite)])
                if sample_dir is not None:
                    for k, (index, video) in enumerate(zip(indices, videos)):
                        self.write_sample(sample_dir / f"step-{self.step}-{index}.mp4", video, batch.cameras[k])
        names = ["total", *(r.name for r in self.reward_set.rewards)] if self.reward_set is not None else []
        if not names:
            return {}
        local = torch.stack([sums.get(name, torch.zeros(2)) for name in names]).to(accelerator.device)
        total = accelerator.reduce(local, "sum").cpu()
        return {f"eval/reward/{name}": float(s / n) if n else math.nan for name, (s, n) in zip(names, total.tolist())}

    def write_sample(self, path: Path, video: torch.Tensor, cameras: Cameras) -> Path:
        """``video (T, 3, H, W)`` as an mp4 with its commanded camera path and, where a reward of the set can
        estimate cameras (``estimate_trajectory``, as ``pose_consistency`` does), the estimated one."""
        cam_from_world, intrinsics = cameras.cam_from_world[0], cameras.intrinsics[0]
        paths = {"commanded": cam_from_world}
        rewards = self.reward_set.rewards if self.reward_set is not None else []
        estimator = next((r for r in rewards if hasattr(r, "estimate_trajectory")), None)
        if estimator is not None:
            estimated = estimator.estimate_trajectory(video, cam_from_world, intrinsics)
            if estimated is not None:
                paths["estimated"] = estimated
        return write_video(path, camera_path_video(video, paths))

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """A snapshot of the trained weights by the policy's checkpoint keys, whole and on the CPU (sharded
        weights are gathered: every process must call this)."""
        return {
            key: self.backend.full_tensor(param.detach()).to("cpu", copy=True).contiguous()
            for key, param in self.policy.trained_parameters().items()
        }

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads what :meth:`trained_state_dict` returned (sharded weights take their shard); a missing or
        unexpected key is an error naming it."""
        load_trained_weights(self.policy.trained_parameters(), state, self.backend.load_tensor)
        self.backend.after_weights_loaded()

    def save_checkpoint(self, name: str | None = None) -> Path:
        """Writes ``name`` (default ``checkpoint-<step>``; the rolling state is ``last-step-<step>``) atomically
        (``lyra_rl.training.checkpoint``): the trained weights as the policy saves them and the training state, all
        whole, so a run resumes on any number of processes."""
        trained, optimizer = self.trained_state_dict(), self.backend.optimizer_state_dict()  # collectives
        name = name or f"checkpoint-{self.step}"
        final = self.output_dir / name
        if self.accelerator.is_main_process:

            def write(folder: Path) -> None:
                self.policy.save_trained_weights(folder, trained)
                torch.save(
                    {
                        "optimizer": optimizer,
                        "lr_scheduler": self.lr_scheduler.state_dict(),
                        "step": self.step,
                        "history": self.history,
                        "rng": rng_state(),
                        "config": self.recorded_config,
                    },
                    folder / TRAINER_STATE,
                )

            write_checkpoint(self.output_dir, name, write)
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Continues from what :meth:`save_checkpoint` wrote: weights, optimizer and schedule, step, history, RNGs.

        Every file is read and checked first (:func:`~lyra_rl.training.checkpoint.verify_checkpoint`): one that
        does not load, or a non-finite tensor, raises :class:`~lyra_rl.training.checkpoint.CheckpointError`
        naming the file, with the trainer left as it was."""
        verify_checkpoint(path)
        trainer_state = read_trainer_state(path)
        try:
            weights = self.policy.read_trained_weights(path)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path}: {error}") from error
        self.load_trained_state_dict(weights)
        self.backend.load_optimizer_state_dict(trainer_state["optimizer"])
        self.lr_scheduler.load_state_dict(trainer_state["lr_scheduler"])
        self.step, self.history = trainer_state["step"], trainer_state["history"]
        self.skipped_steps = int(self.history[-1].get("skipped_steps", 0)) if self.history else 0
        set_rng_state(trainer_state["rng"])
