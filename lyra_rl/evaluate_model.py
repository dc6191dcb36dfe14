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

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .data.conditions import ConditionSource
from .evaluate import compare, comparison_table, evaluate_videos, path_estimator, write_evaluation
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


def evaluate_model(
    policy: VideoPolicy,
    conditions: ConditionSource,
    reward_set: RewardSet,
    output_dir: str | Path | None = None,
    **settings,
) -> list[dict]:
    """Samples and scores the held-out conditions ``0 .. num_conditions - 1`` once per seed (see the module;
    ``settings`` are :func:`evaluate_variants`' sampler settings). ``output_dir``, if given, receives
    ``videos/seed-<s>-<i>.mp4`` (the generated video | the true render, with the commanded and estimated camera
    paths from above), ``trajectories/seed-<s>-<i>.png``, ``evaluation.json`` and ``evaluation.md``.

    Returns:
        one row per video, by seed then condition: ``video``, ``seed``, ``condition`` and
        :func:`~lyra_rl.evaluate.evaluate_videos`' metrics.
    """
    (rows,) = evaluate_variants(
        policy, {"model": nullcontext}, conditions, reward_set, output_dir, **settings
    ).values()
    if output_dir is not None:
        write_evaluation(rows, output_dir)
    return rows


def evaluate_before_after(
    policy: VideoPolicy,
    conditions: ConditionSource,
    reward_set: RewardSet,
    output_dir: str | Path | None = None,
    **settings,
) -> dict[str, dict[str, float]]:
    """What training changed: :func:`evaluate_model` of the reference (the policy with its adapters disabled,
    :meth:`~lyra_rl.policy.VideoPolicy.adapters_disabled`: the model before training) and of the trained policy,
    from the same noise, compared by :func:`~lyra_rl.evaluate.compare` (with the spread over the seeds).
    ``output_dir``, if given, receives ``before/`` and ``after/`` (``evaluation.json``, ``evaluation.md``),
    ``comparison.md`` and ``videos/seed-<s>-<i>.mp4``: before | after | the true render, with the commanded path
    and both estimated ones drawn.

    Returns:
        :func:`~lyra_rl.evaluate.compare`'s table, metric -> before, after, delta, relative, delta_sem, delta_std,
        count.
    """
    variants = {"before": policy.adapters_disabled, "after": nullcontext}
    rows = evaluate_variants(policy, variants, conditions, reward_set, output_dir, **settings)
    comparison = compare(rows["before"], rows["after"])
    if output_dir is not None:
        for name, variant_rows in rows.items():
            write_evaluation(variant_rows, Path(output_dir) / name)
        seeds = sorted({row["seed"] for row in rows["after"]})
        heading = f"# Before and after training ({len(rows['after'])} held-out videos, seeds {seeds})"
        (Path(output_dir) / "comparison.md").write_text(f"{heading}\n\n{comparison_table(comparison)}\n")
    return comparison


@torch.no_grad()
def evaluate_variants(
    policy: VideoPolicy,
    variants: dict[str, Callable[[], AbstractContextManager]],
    conditions: ConditionSource,
    reward_set: RewardSet,
    output_dir: str | Path | None,
    num_conditions: int,
    seeds: Sequence[int],
    num_sampling_steps: int,
    shift: float,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
    batch_size: int = 4,
    bf16: bool = False,
) -> dict[str, list[dict]]:
    """Samples and scores the held-out conditions once per seed and per variant of the policy, every variant
    from the same noise; writes each video's variants side by side (then the true render), with the commanded
    path and every variant's estimated one, to ``output_dir/videos/`` and ``trajectories/`` if given.

    Args:
        policy: a placed policy, its trained weights loaded (e.g. ``policies.build_policy`` and
            :func:`~lyra_rl.training.checkpoint.load_trained_weights`).
        variants: name -> a context manager factory within which the policy is that variant (``nullcontext``:
            as it is; ``policy.adapters_disabled``: the reference).
        conditions: the run's condition source; its held-out conditions are evaluated (with their true videos
            where it renders them, ``videos=True``).
        reward_set: the rewards; one must estimate camera paths (``pose_consistency``).
        output_dir: where the videos and path plots go (``None``: nowhere).
        num_conditions: held-out conditions per seed (``0 .. num_conditions - 1``).
        seeds: sampling seeds (the noise of condition ``i`` under seed ``s`` is the trainer's at seed ``s``).
        num_sampling_steps, shift, guidance_scale, negative_prompt: the sampler's (the Euler ODE over the
            shifted schedule, classifier-free guidance when ``guidance_scale != 1``).
        batch_size: conditions sampled together.
        bf16: sample under bf16 autocast (a policy placed with bf16 frozen weights).

    Returns:
        name -> one row per video, by seed then condition: ``video``, ``seed``, ``condition`` and
        :func:`~lyra_rl.evaluate.evaluate_videos`' metrics.
    """
    if num_conditions < 1 or batch_size < 1:
        raise ValueError(f"num_conditions and batch_size must be >= 1, got {num_conditions} and {batch_size}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    path_estimator(reward_set)  # a set that cannot estimate paths fails before any sampling
    device = next(policy.parameters()).device
    output_dir = None if output_dir is None else Path(output_dir)
    rows = {name: [] for name in variants}
    progress = tqdm(total=num_conditions * len(seeds) * len(variants), desc="evaluate", unit="video")
    for part in micro_batches(num_conditions, batch_size):
        batch = conditions(list(range(part.start, part.stop)), held_out=True)
        cond, uncond = policy_conditions(policy, batch, guidance_scale, negative_prompt)
        latent_shape = policy.latent_shape(batch.cameras.cam_from_world.shape[1], *batch.images.shape[-2:])
        for seed in seeds:
            noise = evaluation_noise(seed, latent_shape, batch.ids.tolist()).to(device)
            videos, estimated = {}, {}
            for name, variant in variants.items():
                with variant(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    latents = ode_sample(policy, cond, noise, num_sampling_steps, shift, uncond, guidance_scale)
                videos[name] = policy.decode(latents, cond).float().cpu()
                scored, estimated[name] = evaluate_videos(
                    videos[name], batch.cameras, batch.prompts, reward_set, batch.videos, batch.images
                )
                for index, row in zip(batch.ids.tolist(), scored):
                    rows[name].append({"video": f"seed-{seed}-{index}.mp4", "seed": seed, "condition": index, **row})
                progress.update(len(videos[name]))
            if output_dir is not None:
                for k, index in enumerate(batch.ids.tolist()):
                    paths = {"commanded": batch.cameras.cam_from_world[k]}
                    for name in variants:
                        label = "estimated" if len(variants) == 1 else f"estimated, {name}"
                        paths.update({label: estimated[name][k]} if estimated[name][k] is not None else {})
                    panels = torch.cat([videos[name][k] for name in variants], dim=-1)
                    reference = None if batch.videos is None else batch.videos[k]
                    stem = f"seed-{seed}-{index}"
                    write_video(output_dir / "videos" / f"{stem}.mp4", comparison_video(panels, reference, paths))
                    plot_trajectories(paths, output_dir / "trajectories" / f"{stem}.png", stem)
    progress.close()
    for variant_rows in rows.values():
        variant_rows.sort(key=lambda row: (list(seeds).index(row["seed"]), row["condition"]))
    return rows
