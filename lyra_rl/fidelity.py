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
    DIRECTIONS,
    Cameras,
    default_intrinsics,
    make_pose,
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

    The direction cycles through the seven presets with the seed unless given. Variants: rendered along
    another preset (``wrong_trajectory``) or with an ease-in speed profile (``wrong_speed``), temporally
    shuffled, frozen, non-rigidly warped, cross-faded into another scene along the same path, blurred.
    """
    direction = direction or DIRECTIONS[seed % len(DIRECTIONS)]
    generator = torch.Generator().manual_seed(seed)
    scene = make_scene(seed)
    trajectory = trajectory_preset(direction, num_frames)
    K = default_intrinsics(height, width)
    video = render(scene, trajectory, K, height, width).frames
    others = [d for d in DIRECTIONS if d != direction]
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
