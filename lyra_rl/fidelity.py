"""Reward fidelity on videos with known geometry: consistent clips, their broken variants, and AUCs.

A reward is only as good as its measured ability to rank a 3D-consistent video above a broken one.
This module builds both from the procedural renderer (or from frames with known cameras a user brings)
and computes, per reward and per kind of breakage, the AUC of that ranking.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from .camera import (
    OBJECT_PRESETS,
    PIVOT_DEPTH,
    PRESETS,
    Cameras,
    axis_angle_to_matrix,
    default_intrinsics,
    invert_pose,
    make_pose,
    matrix_to_axis_angle,
    relative_to_first,
    resample_trajectory,
    trajectory_preset,
    yaw_matrix,
)
from .camera.colmap import is_colmap_model, read_colmap_model
from .data import broken
from .data.renderer import render
from .data.scenes import make_scene
from .reward import RewardSet

VARIANTS = ("wrong_trajectory", "shuffled", "frozen", "warped", "crossfade", "wrong_speed", "blurred")

FAMILIES = tuple(d for d in PRESETS if d != "static")
"""The camera motions the procedural clips cycle through: every preset that moves."""

PERTURBATIONS: dict[str, tuple[float, ...]] = {
    "rotation_drift": (0.5, 1.0, 2.0, 4.0, 8.0),  # degrees, reached at the last frame
    "translation_direction": (5.0, 10.0, 15.0, 30.0, 45.0),  # degrees
    "speed": (0.5, 0.71, 1.41, 2.0),  # factor; its size is |log2 factor|
    "reversed": (-1.0,),  # the commanded motion played backwards from frame 0 (speed -1)
}
"""Graded errors of a command against the true video (:func:`perturbed_command`), by kind: the amounts."""


@dataclass
class Clip:
    """A video with the cameras it is scored against.

    Attributes:
        video: ``(T, 3, H, W)`` in [0, 1].
        cam_from_world: commanded extrinsics ``(T, 4, 4)``.
        intrinsics: ``(T, 3, 3)`` pixels.
        label: where it comes from (scene seed and direction, or a folder).
    """

    video: Tensor
    cam_from_world: Tensor
    intrinsics: Tensor
    label: str


def procedural_clips(
    seed: int, height: int, width: int, num_frames: int = 16, direction: str | None = None
) -> tuple[Clip, dict[str, Clip]]:
    """A consistent clip of scene ``seed`` along a preset, and its broken variants (scored against the same cameras).

    The direction cycles through ``FAMILIES`` with the seed unless given (the object presets in a room with a box
    at the pivot). Variants: rendered along
    another preset (``wrong_trajectory``) or with an ease-in speed profile (``wrong_speed``), temporally
    shuffled, frozen, non-rigidly warped, cross-faded into another scene along the same path, blurred.
    """
    direction = direction or FAMILIES[seed % len(FAMILIES)]
    generator = torch.Generator().manual_seed(seed)
    scene = make_scene(seed, pivot_depth=PIVOT_DEPTH if direction in OBJECT_PRESETS else None)
    trajectory = trajectory_preset(direction, num_frames)
    K = default_intrinsics(height, width)
    video = render(scene, trajectory, K, height, width).frames
    others = [d for d in FAMILIES if d != direction]
    wrong = others[int(torch.randint(len(others), (1,), generator=generator))]
    progress = torch.linspace(0, 1, num_frames)
    videos = {
        "wrong_trajectory": render(scene, trajectory_preset(wrong, num_frames), K, height, width).frames,
        "shuffled": broken.shuffle_frames(video, generator),
        "frozen": broken.freeze_frames(video),
        "warped": broken.warp_nonrigid(video, 0.04 * width, generator),
        "crossfade": broken.crossfade(video, render(make_scene(seed + 10_000), trajectory, K, height, width).frames),
        "wrong_speed": render(
            scene, resample_trajectory(trajectory, progress**2 * (num_frames - 1)), K, height, width
        ).frames,
        "blurred": broken.blur(video, 0.03 * width),
    }
    clip = Clip(video, trajectory, K.expand(num_frames, 3, 3).clone(), f"scene {seed} {direction}")
    return clip, {name: Clip(v, clip.cam_from_world, clip.intrinsics, name) for name, v in videos.items()}


def load_frames_folder(folder: str | Path) -> Clip:
    """Frames with known cameras from a folder.

    Layouts::

        folder/
            frames/000.png, 001.png, ...   (sorted by name; any format imageio reads)
            cameras.json                   {"intrinsics": [[3x3]] (one, or one per frame, pixels),
                                            "cam_from_world": [[4x4], ...] (OpenCV world-to-camera)}

        folder/                            (COLMAP's: lyra_rl.camera.colmap)
            images/...                     (the registered images, in name order)
            sparse/0/ or sparse/           cameras.txt, images.txt (or .bin)
    """
    folder = Path(folder)
    sparse = next((s for s in (folder / "sparse" / "0", folder / "sparse") if is_colmap_model(s)), None)
    if sparse is not None and not (folder / "cameras.json").is_file():
        model = read_colmap_model(sparse)
        frames = [np.asarray(iio.imread(folder / "images" / name))[..., :3] for name in model.names]
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
        return Clip(video, relative_to_first(model.cam_from_world.double()).float(), model.intrinsics, str(folder))
    paths = sorted(p for p in (folder / "frames").iterdir() if p.is_file())
    if len(paths) < 2:
        raise ValueError(f"{folder / 'frames'} needs at least 2 frames, found {len(paths)}")
    frames = [np.asarray(iio.imread(p))[..., :3] for p in paths]
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    cameras = json.loads((folder / "cameras.json").read_text())
    cam_from_world = relative_to_first(torch.tensor(cameras["cam_from_world"], dtype=torch.float64)).float()
    intrinsics = torch.tensor(cameras["intrinsics"], dtype=torch.float32)
    intrinsics = intrinsics.expand(len(paths), 3, 3).clone() if intrinsics.ndim == 2 else intrinsics
    if cam_from_world.shape != (len(paths), 4, 4) or intrinsics.shape != (len(paths), 3, 3):
        raise ValueError(f"{folder}/cameras.json must hold one camera per frame ({len(paths)} frames)")
    return Clip(video, cam_from_world, intrinsics, str(folder))


def folder_variants(clip: Clip, seed: int = 0, drift_degrees: float = 5.0) -> dict[str, Clip]:
    """Broken variants of a user clip: image-space ones, and the same video under a wrong trajectory.

    ``wrong_trajectory`` keeps the video but commands cameras that yaw away, about their own centers, by
    up to ``drift_degrees`` over the clip; the frame order reversed serves as the cross-fade partner.
    """
    generator = torch.Generator().manual_seed(seed)
    num_frames, width = len(clip.video), clip.video.shape[-1]
    drift = yaw_matrix(torch.linspace(0, math.radians(drift_degrees), num_frames, dtype=torch.float64))
    wrong = (
        make_pose(drift.transpose(-1, -2), torch.zeros(num_frames, 3, dtype=torch.float64))
        @ clip.cam_from_world.double()
    ).float()
    videos = {
        "frozen": broken.freeze_frames(clip.video),
        "warped": broken.warp_nonrigid(clip.video, 0.04 * width, generator),
        "crossfade": broken.crossfade(clip.video, clip.video.flip(0)),
        "blurred": broken.blur(clip.video, 0.03 * width),
    }
    if num_frames > 2:
        videos["shuffled"] = broken.shuffle_frames(clip.video, generator)
    variants = {"wrong_trajectory": Clip(clip.video, wrong, clip.intrinsics, "wrong_trajectory")}
    variants.update({name: Clip(v, clip.cam_from_world, clip.intrinsics, name) for name, v in videos.items()})
    return variants


def score_with_variants(
    reward_set: RewardSet, clip: Clip, variants: dict[str, Clip]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Scores a clip and its variants in one batch.

    Returns:
        reward name -> score of the clip, and variant -> reward name -> score (NaN: not applicable).
    """
    clips = [clip, *variants.values()]
    videos = torch.stack([c.video for c in clips])
    cameras = Cameras(torch.stack([c.cam_from_world for c in clips]), torch.stack([c.intrinsics for c in clips]))
    scores = reward_set(videos, cameras, [""] * len(clips)).rewards
    consistent = {name: float(s[0]) for name, s in scores.items()}
    broken_scores = {v: {name: float(s[k + 1]) for name, s in scores.items()} for k, v in enumerate(variants)}
    return consistent, broken_scores


def variant_aucs(
    consistent: list[dict[str, float]], broken_scores: list[dict[str, dict[str, float]]]
) -> dict[str, dict[str, float]]:
    """Reward -> variant -> AUC over clips, from what :func:`score_with_variants` returned per clip."""
    variants = list(broken_scores[0])
    return {
        name: {
            v: ranking_auc(
                torch.tensor([c[name] for c in consistent]), torch.tensor([b[v][name] for b in broken_scores])
            )
            for v in variants
        }
        for name in consistent[0]
    }


def ranking_auc(consistent: Tensor, broken_scores: Tensor) -> float:
    """P(consistent > broken) over all pairs, ties counting one half, NaN entries dropped (Mann-Whitney AUC)."""
    c = consistent[~consistent.isnan()]
    b = broken_scores[~broken_scores.isnan()]
    if len(c) == 0 or len(b) == 0:
        return math.nan
    diff = c[:, None] - b[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def perturbed_command(cam_from_world: Tensor, kind: str, amount: float, generator: torch.Generator) -> Tensor | None:
    """The commanded path ``(T, 4, 4)`` (frame 0 = identity) with an error of ``kind`` (see ``PERTURBATIONS``).

    ``rotation_drift``: every camera turns about its own center, about one random axis, by an angle growing
    linearly to ``amount`` degrees at the last frame. ``translation_direction``: every camera center turns by
    ``amount`` degrees about the origin, about a random axis orthogonal to the path's end point (None for a path
    that does not translate). ``speed`` and ``reversed``: rotations (as rotation vectors) and centers scaled by
    ``amount`` (the path travelled at that speed; -1 backwards).
    """
    world_from_cam = invert_pose(cam_from_world.double())
    rotations, centers = world_from_cam[:, :3, :3], world_from_cam[:, :3, 3]
    axis = torch.randn(3, generator=generator, dtype=torch.float64)
    num_frames = len(cam_from_world)
    if kind == "rotation_drift":
        angles = torch.linspace(0, math.radians(amount), num_frames, dtype=torch.float64)
        rotations = axis_angle_to_matrix(angles[:, None] * axis / axis.norm()) @ rotations
    elif kind == "translation_direction":
        end = centers[-1]
        if float(end.norm()) < 1e-6:
            return None
        orthogonal = torch.linalg.cross(end, axis)
        turn = axis_angle_to_matrix(math.radians(amount) * orthogonal / orthogonal.norm())
        centers = centers @ turn.T
    elif kind in ("speed", "reversed"):
        rotations = axis_angle_to_matrix(amount * matrix_to_axis_angle(rotations))
        centers = amount * centers
    else:
        raise ValueError(f"unknown perturbation {kind!r}; expected one of {', '.join(PERTURBATIONS)}")
    return invert_pose(make_pose(rotations, centers)).float()


def perturbation_size(kind: str, amount: float) -> float:
    """How far ``amount`` of ``kind`` is from the true command (degrees, or ``|log2 factor|`` for speed)."""
    return abs(math.log2(amount)) if kind == "speed" else abs(amount)


def graded_scores(rewards: list, clip: Clip, seed: int = 0) -> dict[str, dict[float, dict[str, float]]]:
    """The rewards of the true video of ``clip`` under the true command (kind ``"true"``, amount 0) and under
    every amount of every perturbation: kind -> amount -> reward name -> score (NaN where not applicable).

    The rewards are called in this process, sharing the video's correspondences across the commands.
    """
    generator = torch.Generator().manual_seed(seed)
    commands = {("true", 0.0): clip.cam_from_world}
    for kind, amounts in PERTURBATIONS.items():
        axis_seed = int(torch.randint(2**31, (1,), generator=generator))
        for amount in amounts:  # one axis per kind, so that its amounts grow along one direction
            command = perturbed_command(clip.cam_from_world, kind, amount, torch.Generator().manual_seed(axis_seed))
            if command is not None:
                commands[kind, amount] = command
    from rewards.context import VideoContext  # the geometric rewards' shared context (rewards is a plugin package)

    geometries: dict = {}
    caches = [
        {VideoContext: VideoContext(clip.video, command, clip.intrinsics, geometries=geometries)}
        for command in commands.values()
    ]
    videos = clip.video.expand(len(commands), *clip.video.shape)
    cameras = Cameras(torch.stack(list(commands.values())), clip.intrinsics.expand(len(commands), -1, 3, 3))
    scores = {reward.name: reward(videos, cameras, [""] * len(commands), caches=caches).rewards for reward in rewards}
    result: dict[str, dict[float, dict[str, float]]] = {kind: {} for kind in ("true", *PERTURBATIONS)}
    for k, (kind, amount) in enumerate(commands):
        result[kind][amount] = {name: float(values[k]) for name, values in scores.items()}
    return result


def graded_summary(per_clip: list[dict[str, dict[float, dict[str, float]]]]) -> dict[str, dict[str, dict]]:
    """Reward -> kind -> ``spearman``, the mean over clips of the Spearman correlation between the perturbation's
    size (0 for the true command included) and minus the reward (1: the reward falls as the command moves away
    from the truth), and ``auc`` -> amount -> the paired AUC (the fraction of clips whose true command scores
    above that amount's, ties one half), from :func:`graded_scores` of each clip. The reward ``"set"`` is the
    sum of the rewards."""
    per_clip = [
        {
            kind: {a: {**scores, "set": sum(scores.values())} for a, scores in amounts.items()}
            for kind, amounts in clip.items()
        }
        for clip in per_clip
    ]
    names = list(per_clip[0]["true"][0.0])
    summary: dict[str, dict[str, dict]] = {name: {} for name in names}
    for kind, amounts in PERTURBATIONS.items():
        clips = [clip for clip in per_clip if clip[kind]]  # those the kind applies to (a translation needs one)
        for name in names:
            correlations = [
                spearman(
                    torch.tensor([0.0] + [perturbation_size(kind, a) for a in clip[kind]]),
                    -torch.tensor([clip["true"][0.0][name]] + [clip[kind][a][name] for a in clip[kind]]),
                )
                for clip in clips
            ]
            finite = [c for c in correlations if not math.isnan(c)]
            aucs = {}
            for amount in amounts:
                true, perturbed = (
                    torch.tensor([clip["true"][0.0][name] for clip in clips]),
                    torch.tensor([clip[kind][amount][name] for clip in clips]),
                )
                keep = ~(true.isnan() | perturbed.isnan())
                wins = (true[keep] > perturbed[keep]).double() + 0.5 * (true[keep] == perturbed[keep]).double()
                aucs[amount] = float(wins.mean()) if keep.any() else math.nan
            summary[name][kind] = {
                "spearman": float(np.mean(finite)) if finite and len(amounts) > 1 else math.nan,
                "auc": aucs,
            }
    return summary


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two ``(N,)`` tensors (ties get their mean rank; NaN pairs dropped; NaN if
    either is constant)."""
    keep = ~(x.isnan() | y.isnan())
    x, y = x[keep].double(), y[keep].double()
    if len(x) < 2:
        return math.nan

    def ranks(v: Tensor) -> Tensor:
        order = (v[:, None] > v[None, :]).double().sum(1) + 0.5 * ((v[:, None] == v[None, :]).double().sum(1) - 1)
        return order - order.mean()

    rx, ry = ranks(x), ranks(y)
    denom = float(rx.norm() * ry.norm())
    return math.nan if denom == 0 else float((rx * ry).sum()) / denom
