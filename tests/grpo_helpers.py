"""Helpers for the online trainer tests (GRPO, DPO, NFT): a simple reward and a pixel-space toy decoder.

The tiny policy's randomly initialised VAE decoder barely depends on its latents, so a reward on its
videos gives an online trainer nothing to learn from. The toy decoder reads three latent channels as colors instead
(sigmoid, nearest upsampling), so that the real DiT, LoRA, rollouts and updates are tested end to end.
"""

import types

import torch
import torch.nn.functional as F

from lyra_rl.reward import VideoReward


class Brightness(VideoReward):
    """Mean brightness of the video, in [0, 1], with its contrast (pixel std) as a diagnostic."""

    name = "brightness"
    floor = 0.0

    def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
        return float(video.mean()), {"contrast": float(video.std())}


def toy_decode(self, latents, cond):
    """Latents ``(B, C, k, h, w)`` to videos ``(B, 4k + 1, 3, 8h, 8w)``: channels 0-2 as colors."""
    full = torch.cat([cond.image_latents, latents], dim=2)[:, :3]
    frames = torch.cat([full[:, :, :1], full[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
    pixels = F.interpolate(frames, scale_factor=(1, 8, 8), mode="nearest")
    return torch.sigmoid(pixels).permute(0, 2, 1, 3, 4)


def with_toy_decoder(policy):
    policy.decode = types.MethodType(toy_decode, policy)
    return policy


def make_trainer(output_dir, accelerator=None, **overrides):
    """A tiny-policy GRPO trainer with the toy decoder and the brightness reward; ``overrides`` are fields of
    ``GRPOConfig`` or ``PolicyConfig``."""
    from lyra_rl.training import GRPOConfig, GRPOTrainer

    settings = dict(learning_rate=1e-2, epsilon=0.2, beta=0.05, train_timestep_fraction=1.0)
    return make_online_trainer(GRPOTrainer, GRPOConfig, output_dir, accelerator, **{**settings, **overrides})


def make_online_trainer(trainer_class, config_class, output_dir, accelerator=None, reward=None, **overrides):
    """A tiny-policy trainer of ``trainer_class`` (GRPO, DPO, NFT) with the toy decoder and the brightness reward
    (or ``reward``): 2 conditions per step, groups of 4, 4 sampling steps; ``overrides`` are fields of
    ``config_class`` or ``PolicyConfig``."""
    from dataclasses import fields

    from lyra_rl.reward import RewardSet
    from lyra_rl.training import make_accelerator
    from policies import PolicyConfig, build_policy

    settings = dict(
        output_dir=str(output_dir), learning_rate=1e-2, num_sampling_steps=4, conditions_per_step=2, num_generations=4
    )
    policy_fields = {f.name for f in fields(PolicyConfig)}
    config = config_class(**{k: v for k, v in {**settings, **overrides}.items() if k not in policy_fields})
    policy_config = PolicyConfig(**{k: v for k, v in overrides.items() if k in policy_fields})
    accelerator = accelerator or make_accelerator(config.mixed_precision, cpu=True)
    policy = with_toy_decoder(build_policy(policy_config, config.seed, accelerator))
    return trainer_class(config, policy, RewardSet([reward or Brightness()]), accelerator)


def step_gradients(trainer) -> list[torch.Tensor]:
    """Takes the trainer's next step; returns the accumulated gradients it handed to its optimizer."""
    grads, step = [], trainer.backend.step
    trainer.backend.step = lambda **kwargs: (
        grads.extend(p.grad.clone() for p in trainer.backend.params) or step(**kwargs)
    )
    trainer.train_step()
    return grads


if __name__ == "__main__":  # run under `accelerate launch`: prints the run's numbers as JSON on rank 0
    import json
    import sys

    from torch.distributed.tensor import DTensor

    from lyra_rl.training.fsdp import reshard

    conditions_per_step, output_dir = int(sys.argv[1]), sys.argv[2]
    # one held-out condition: the second process has no share of it (sharded, it must join the forward passes)
    settings = dict(
        conditions_per_step=conditions_per_step, max_steps=3, save_steps=100, eval_conditions=1, max_grad_norm=1e-3
    )  # the gradient norms are ~5e-3: every step clips (Adam's first moment shows it)
    trainer = make_trainer(output_dir, **settings)
    history = [trainer.train_step() for _ in range(2)]
    evaluation = trainer.evaluate()
    checkpoint = trainer.save_checkpoint()
    resumed = make_trainer(output_dir, **settings)
    resumed.load_checkpoint(checkpoint)
    trainer.train_step(), resumed.train_step()  # step 3's update uses the optimizer state of steps 1-2
    after, resumed_after = trainer.trained_state_dict(), resumed.trained_state_dict()

    policy, blocks, engine = (
        trainer.policy,
        trainer.policy.transformer.blocks,
        getattr(trainer.backend, "engine", None),
    )
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in blocks.parameters())
    held = local / sum(p.numel() for p in blocks.parameters())
    moments = [
        t for state in trainer.optimizer.state.values() for t in state.values() if t.dim()
    ]  # (ZeRO: its partition)
    local_moments = sum(t.to_local().numel() if isinstance(t, DTensor) else t.numel() for t in moments)
    trained = sum(p.numel() for p in policy.trained_parameters().values())
    cond, _ = trainer.policy_conditions(trainer.conditions([0], held_out=True))
    with torch.no_grad(), trainer.autocast():  # a gradient-free pass: does a sharded block stay gathered after it?
        policy.velocity(torch.randn(1, *policy.latent_shape(9, 32, 48)), torch.full((1,), 0.5), cond)
    gathered = not isinstance(blocks[0].attn1.to_q.base_layer.weight, DTensor)
    reshard(policy)
    if trainer.accelerator.is_main_process:
        print(
            json.dumps(
                {
                    "num_processes": trainer.accelerator.num_processes,
                    "sharded": trainer.backend.joins_every_forward,
                    "block_weights_held": held,
                    "optimizer_state_held": local_moments / (2 * trained),  # AdamW: two moments per trained element
                    "zero_stage": engine.zero_optimization_stage() if engine else None,
                    "gradient_bucket": engine.optimizer.reduce_bucket_size / trained if engine else None,
                    "gathered_after_no_grad_forward": gathered,
                    "loss": [h["loss"] for h in history],
                    "grad_norm": [h["grad_norm"] for h in history],
                    "first_ratio": [history[0]["ratio_min"], history[0]["ratio_max"]],
                    "trained_dtypes": sorted({str(p.dtype) for p in policy.trained_parameters().values()}),
                    "frozen_dtype": str(blocks[0].attn1.to_q.base_layer.weight.dtype),
                    "reward": [h["reward/total"] for h in history],
                    "advantages": trainer.last_advantages.tolist(),
                    "eval": evaluation,
                    "resumed_weight_diff": max(float((after[k] - resumed_after[k]).abs().max()) for k in after),
                }
            )
        )
    trainer.accelerator.end_training()  # destroy the process group: gloo may abort at exit otherwise
