"""The embedded world model's shipping bar (issue 11), on held-out procedural scenes and random camera paths.

For each held-out clip (scenes and paths from the run's ``seed + 1``, never trained on) the model samples a
video from the true camera path and, from the same noise, from another clip's path (a swapped camera). It
reports, next to the true render and two baselines that need no model (frame 0 warped into each camera by
the depth-3 plane homography, and frame 0 copied), each source's mean squared error to the true render, its
``pose_consistency`` and ``epipolar`` rewards with how many rollouts they could score, and RotErr / TransErr
against the command. The bar:

- ``true_closer``: the true camera's sample is closer to the true render than the swapped camera's (>= 0.9);
- ``pose_ok`` / ``epipolar_ok``: the rewards score the true camera's samples (non-failed, >= 0.9);
- ``group_nonzero``: GRPO groups (shared initial noise, SDE on every other step, noise level 0.7) whose rewards
  differ, so that their advantages are not zero (1.0);
- ``rot_err_deg`` > 0: something is left for RL to fix.

    python benchmarks/world_model_bar.py --checkpoint outputs/sft_embedded/checkpoint-2000
    python benchmarks/world_model_bar.py --quick        # the shipped weights, 16 clips

The last line is ``true_closer=X pose_ok=X epipolar_ok=X group_nonzero=X rot_err_deg=X``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from lyra_rl.camera import Cameras
from lyra_rl.data.conditions import ConditionSource
from lyra_rl.evaluate import evaluate_videos, summarize
from lyra_rl.reward import RewardSet
from lyra_rl.rollout import ode_sample, rollout
from lyra_rl.sampling import shifted_sigmas
from lyra_rl.training.trainer import evaluation_noise, seeded
from policies import PolicyConfig, build_policy
from policies.dense_camera import warp_first_frame
from policies.loading import SHIPPED_DITS

REWARDS = ("pose_consistency", "epipolar")
SIZE = (9, 64, 96)  # frames, height, width: the embedded model's training size


def sample(policy, batch, cameras: Cameras, noise: torch.Tensor, args) -> torch.Tensor:
    """Videos ``(B, T, 3, H, W)`` sampled from ``noise`` as evaluation samples them (the Euler ODE)."""
    cond = policy.condition(batch.images, batch.prompts, cameras)
    return policy.decode(ode_sample(policy, cond, noise, args.steps, args.shift), cond).float()


def sample_groups(policy, batch, noise: torch.Tensor, args):
    """GRPO groups as the trainer draws them: ``args.group_size`` rollouts per condition from shared initial
    noise, the SDE on every other step with per-rollout draws."""
    batch = batch.repeat(args.group_size)
    cond = policy.condition(batch.images, batch.prompts, batch.cameras)
    latent_shape = noise.shape[1:]
    step_noise = torch.stack(
        [
            torch.randn((args.steps, *latent_shape), generator=seeded(args.seed, 2, int(i), g))
            for i in batch.ids[:: args.group_size]
            for g in range(args.group_size)
        ],
        dim=1,
    )
    sde = torch.arange(args.steps) % 2 == 0
    sigmas = shifted_sigmas(args.steps, args.shift)
    initial = noise.repeat_interleave(args.group_size, 0)
    result = rollout(policy, cond, initial, sigmas, sde, args.noise_level, step_noise)
    return policy.decode(result.states[-1], cond).float(), batch


def mse(videos: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-video mean squared error over frames 1.. (frame 0 is given): ``(B,)``."""
    return (videos[:, 1:] - truth[:, 1:]).square().flatten(1).mean(1)


def score(name: str, videos: torch.Tensor, cameras: Cameras, batch, reward_set: RewardSet) -> dict[str, float]:
    rows, _ = evaluate_videos(videos, cameras, batch.prompts, reward_set, batch.videos)
    summary = summarize(rows)
    row = {"source": name, "mse": float(mse(videos, batch.videos).mean())}
    for reward in REWARDS:
        row[f"{reward}_ok"] = 1.0 - summary[f"failed/{reward}"]["mean"]
        row[reward] = summary[f"reward/{reward}"]["mean"]
    row["rot_err_deg"], row["trans_err_scaled"] = (summary[k]["mean"] for k in ("rot_err_deg", "trans_err_scaled"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="embedded", help="a DiT safetensors file or checkpoint folder")
    parser.add_argument("--clips", type=int, default=50, help="held-out clips")
    parser.add_argument("--groups", type=int, default=8, help="held-out clips sampled as GRPO groups")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--noise-level", type=float, default=0.7, help="the groups' SDE noise level")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed (held-out scenes: seed + 1)")
    parser.add_argument("--quick", action="store_true", help="16 clips, 4 groups")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.groups = 16, 4
    checkpoint = Path(args.checkpoint)
    dit_path = checkpoint / "diffusion_pytorch_model.safetensors" if checkpoint.is_dir() else args.checkpoint
    dit_path = SHIPPED_DITS.get(str(dit_path), dit_path)
    if not Path(dit_path).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no DiT weights at {dit_path}")
    start = time.perf_counter()
    torch.set_grad_enabled(False)
    policy = build_policy(PolicyConfig(policy="embedded", dit_path=str(dit_path), lora_r=0, train_transformer=True))
    policy.dit.eval()
    source = ConditionSource("procedural", args.seed, args.clips, *SIZE, videos=True, camera_paths="random")
    batch = source(list(range(args.clips)), held_out=True)
    swapped = Cameras(batch.cameras.cam_from_world.roll(1, 0), batch.cameras.intrinsics)
    noise = evaluation_noise(args.seed, policy.latent_shape(*SIZE), range(args.clips))
    true_videos = sample(policy, batch, batch.cameras, noise, args)
    swapped_videos = sample(policy, batch, swapped, noise, args)
    true_closer = float((mse(true_videos, batch.videos) < mse(swapped_videos, batch.videos)).float().mean())

    warped = warp_first_frame(batch.images, batch.cameras.cam_from_world, batch.cameras.intrinsics).clamp(0, 1)
    copied = batch.images[:, None].expand_as(batch.videos)
    with RewardSet.from_names(list(REWARDS)) as reward_set:
        rows = [
            score("true render", batch.videos, batch.cameras, batch, reward_set),
            score("plane warp of frame 0", warped, batch.cameras, batch, reward_set),
            score("frame 0 copied", copied, batch.cameras, batch, reward_set),
            score("model, true camera", true_videos, batch.cameras, batch, reward_set),
            score("model, swapped camera", swapped_videos, swapped, batch, reward_set),
        ]
        group_videos, group_batch = sample_groups(
            policy, source(list(range(args.groups)), held_out=True), noise[: args.groups], args
        )
        totals = reward_set(group_videos, group_batch.cameras, group_batch.prompts).total.view(args.groups, -1)
    group_nonzero = float((totals.std(1) > 1e-6).float().mean())

    columns = ["mse", "pose_consistency_ok", "epipolar_ok", "pose_consistency", "epipolar", "rot_err_deg"]
    columns.append("trans_err_scaled")
    size = "x".join(map(str, SIZE))
    print(f"{args.clips} held-out clips (seed {args.seed + 1}, random paths, {size}), {args.steps} sampling steps")
    print("| source | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in rows:
        print(f"| {row['source']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    spread = ", ".join(f"{s:.4f}" for s in totals.std(1).tolist())
    print(f"GRPO groups: {args.groups} x {args.group_size}, reward std per group: {spread}")
    print(f"({time.perf_counter() - start:.0f} s)")
    model = rows[3]
    rot = model["rot_err_deg"]
    print(
        f"true_closer={true_closer:.2f} pose_ok={model['pose_consistency_ok']:.2f} "
        f"epipolar_ok={model['epipolar_ok']:.2f} group_nonzero={group_nonzero:.2f} "
        f"rot_err_deg={rot if math.isnan(rot) else round(rot, 2)}"
    )


if __name__ == "__main__":
    main()
