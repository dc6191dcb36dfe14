"""``lyra-rl evaluate --config``: a model's videos of held-out conditions, scored as a folder of videos is.

For each sampling seed and each of the first ``num_conditions`` held-out conditions of a
:class:`~lyra_rl.data.conditions.ConditionSource`, the policy samples a video as the trainer's held-out
evaluation does (:func:`~lyra_rl.rollout.ode_sample` from :func:`~lyra_rl.training.trainer.evaluation_noise`:
the run's own seed reproduces its ``samples/``), and :func:`~lyra_rl.evaluate.evaluate_videos` scores it
against the commanded cameras, with ``psnr`` to the true render where the source has one (procedural
conditions). Rows carry ``seed`` and ``condition``, so :func:`~lyra_rl.evaluate.compare` reports the spread of
a change over the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .data.conditions import ConditionSource
from .evaluate import evaluate_videos, path_estimator, write_evaluation
from .policy import VideoPolicy
from .reward import RewardSet
from .rollout import micro_batches, ode_sample
from .training.trainer import evaluation_noise, policy_conditions
from .video import camera_path_video, plot_trajectories, write_video


def comparison_video(video: Tensor, reference: Tensor | None, paths: dict[str, Tensor]) -> Tensor:
    """``video (T, 3, H, W)`` and, where given, the ``reference`` (the true render) side by side, with the camera
    ``paths`` (name -> ``(T, 4, 4)`` cam_from_world) drawn from above as a third panel
    (:func:`~lyra_rl.video.camera_path_video`)."""
    frames = video if reference is None else torch.cat([video, reference.to(video)], dim=-1)
    return camera_path_video(frames, paths)


@torch.no_grad()
def evaluate_model(
    policy: VideoPolicy,
    conditions: ConditionSource,
    reward_set: RewardSet,
    num_conditions: int,
    seeds: Sequence[int],
    num_sampling_steps: int,
    shift: float,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
    output_dir: str | Path | None = None,
    batch_size: int = 4,
    bf16: bool = False,
) -> list[dict]:
    """Samples and scores the held-out conditions ``0 .. num_conditions - 1`` once per seed (see the module).

    Args:
        policy: a placed policy, its trained weights loaded (e.g. ``policies.build_policy`` and
            :func:`~lyra_rl.training.checkpoint.load_trained_weights`).
        conditions: the run's condition source; its held-out conditions are evaluated (with their true videos
            where it renders them, ``videos=True``).
        reward_set: the rewards; one must estimate camera paths (``pose_consistency``).
        num_conditions: held-out conditions per seed.
        seeds: sampling seeds (the noise of condition ``i`` under seed ``s`` is the trainer's at seed ``s``).
        num_sampling_steps, shift, guidance_scale, negative_prompt: the sampler's (the Euler ODE over the
            shifted schedule, classifier-free guidance when ``guidance_scale != 1``).
        output_dir: where to write, if given: ``videos/seed-<s>-<i>.mp4`` (the generated video | the true render,
            with the commanded and estimated camera paths from above), ``trajectories/seed-<s>-<i>.png``,
            ``evaluation.json`` and ``evaluation.md``.
        batch_size: conditions sampled together.
        bf16: sample under bf16 autocast (a policy placed with bf16 frozen weights).

    Returns:
        one row per video, by seed then condition: ``video``, ``seed``, ``condition`` and
        :func:`~lyra_rl.evaluate.evaluate_videos`' metrics.
    """
    if num_conditions < 1 or batch_size < 1:
        raise ValueError(f"num_conditions and batch_size must be >= 1, got {num_conditions} and {batch_size}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    path_estimator(reward_set)  # a set that cannot estimate paths fails before any sampling
    device = next(policy.parameters()).device
    output_dir = None if output_dir is None else Path(output_dir)
    rows = []
    progress = tqdm(total=num_conditions * len(seeds), desc="evaluate", unit="video")
    for part in micro_batches(num_conditions, batch_size):
        batch = conditions(list(range(part.start, part.stop)), held_out=True)
        cond, uncond = policy_conditions(policy, batch, guidance_scale, negative_prompt)
        latent_shape = policy.latent_shape(batch.cameras.cam_from_world.shape[1], *batch.images.shape[-2:])
        for seed in seeds:
            noise = evaluation_noise(seed, latent_shape, batch.ids.tolist()).to(device)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                latents = ode_sample(policy, cond, noise, num_sampling_steps, shift, uncond, guidance_scale)
            videos = policy.decode(latents, cond).float().cpu()
            scored, estimated = evaluate_videos(
                videos, batch.cameras, batch.prompts, reward_set, batch.videos, batch.images
            )
            for k, (index, row) in enumerate(zip(batch.ids.tolist(), scored)):
                stem = f"seed-{seed}-{index}"
                rows.append({"video": f"{stem}.mp4", "seed": seed, "condition": index, **row})
                if output_dir is not None:
                    paths = {"commanded": batch.cameras.cam_from_world[k]}
                    paths.update({"estimated": estimated[k]} if estimated[k] is not None else {})
                    reference = None if batch.videos is None else batch.videos[k]
                    write_video(output_dir / "videos" / f"{stem}.mp4", comparison_video(videos[k], reference, paths))
                    plot_trajectories(paths, output_dir / "trajectories" / f"{stem}.png", stem)
            progress.update(len(videos))
    progress.close()
    rows.sort(key=lambda row: (seeds.index(row["seed"]), row["condition"]))
    if output_dir is not None:
        write_evaluation(rows, output_dir)
    return rows
