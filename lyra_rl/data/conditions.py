"""Conditions for rollouts: a first frame, a prompt and a commanded camera trajectory.

The default source renders procedural scenes (``lyra_rl.data.scenes``), so a run needs no data set; users
bring a JSONL manifest or a folder of images with prompts. Either way the condition with global index
``i`` is a pure function of ``i`` (and the seed), whatever the number of processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import DIRECTIONS, Cameras, default_intrinsics, get_trajectory, trajectory_preset
from .scenes import DEFAULT_NUM_BOXES, make_scene, render


@dataclass
class ConditionBatch:
    """Conditions of a batch.

    Attributes:
        images: first frames ``(B, 3, H, W)`` in [0, 1].
        prompts: ``B`` prompts.
        cameras: commanded cameras, ``B`` trajectories of ``T`` frames.
        ids: global condition indices ``(B,)`` (the GRPO group of each rollout).
    """

    images: Tensor
    prompts: list[str]
    cameras: Cameras
    ids: Tensor


def procedural_prompt(num_boxes: int, direction: str) -> str:
    return f"a room with {num_boxes} boxes; the camera moves {direction.replace('_', ' ')}"


def procedural_prompts() -> list[str]:
    """Every prompt :func:`procedural_conditions` can give (to precompute their embeddings)."""
    return [procedural_prompt(n, d) for n in DEFAULT_NUM_BOXES for d in DIRECTIONS]


def procedural_conditions(seed: int, indices: list[int], num_frames: int, height: int, width: int) -> ConditionBatch:
    """Procedural conditions with global indices ``indices``: scene ``seed * 100003 + i``, preset ``i mod 7``."""
    images, prompts, trajectories = [], [], []
    K = default_intrinsics(height, width)
    for index in indices:
        direction = DIRECTIONS[index % len(DIRECTIONS)]
        scene = make_scene(seed * 100_003 + index)
        trajectory = trajectory_preset(direction, num_frames)
        images.append(render(scene, trajectory[:1], K, height, width).frames[0])
        prompts.append(procedural_prompt(scene.num_boxes, direction))
        trajectories.append(trajectory)
    cameras = Cameras(torch.stack(trajectories), K.expand(len(indices), num_frames, 3, 3).clone())
    return ConditionBatch(torch.stack(images), prompts, cameras, torch.tensor(indices))


@dataclass
class ConditionEntry:
    """One user condition: a first-frame image file, a prompt and a preset name or trajectory file."""

    image: Path
    prompt: str
    direction: str


def read_conditions(source: str | Path) -> list[ConditionEntry]:
    """User conditions from a JSONL manifest or a folder of images.

    - JSONL: one ``{"image": PATH, "prompt": TEXT, "direction": PRESET_OR_TRAJECTORY_FILE}`` per line
      (relative paths are relative to the manifest);
    - folder: every ``*.png``/``*.jpg`` with its prompt in ``<stem>.txt`` beside it and, optionally, its
      direction in ``<stem>.direction``; images without one cycle through the seven presets.
    """
    source = Path(source)
    if source.is_file() and source.suffix == ".jsonl":
        entries = []
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"image", "prompt", "direction"} - set(row)
            if missing:
                raise ValueError(f"{source}:{number}: missing {sorted(missing)}")
            direction = row["direction"] if row["direction"] in DIRECTIONS else str(source.parent / row["direction"])
            entries.append(ConditionEntry(source.parent / row["image"], row["prompt"], direction))
    elif source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        entries = []
        for k, image in enumerate(images):
            prompt_file, direction_file = image.with_suffix(".txt"), image.with_suffix(".direction")
            if not prompt_file.is_file():
                raise FileNotFoundError(f"{image.name} has no prompt file {prompt_file.name}")
            direction = direction_file.read_text().strip() if direction_file.is_file() else DIRECTIONS[k % len(DIRECTIONS)]
            entries.append(ConditionEntry(image, prompt_file.read_text().strip(), direction))
    else:
        raise ValueError(f"conditions must be 'procedural', a .jsonl manifest or a folder of images, got {source}")
    if not entries:
        raise ValueError(f"no conditions in {source}")
    return entries


def user_conditions(entries: list[ConditionEntry], indices: list[int], num_frames: int, height: int, width: int) -> ConditionBatch:
    """Conditions ``indices`` (modulo the number of entries), images resized to ``height x width``."""
    images, prompts, trajectories = [], [], []
    for index in indices:
        entry = entries[index % len(entries)]
        image = torch.from_numpy(np.asarray(iio.imread(entry.image))[..., :3].copy()).permute(2, 0, 1).float() / 255
        images.append(F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1))
        prompts.append(entry.prompt)
        trajectories.append(get_trajectory(entry.direction, num_frames))
    K = default_intrinsics(height, width)
    cameras = Cameras(torch.stack(trajectories), K.expand(len(indices), num_frames, 3, 3).clone())
    return ConditionBatch(torch.stack(images), prompts, cameras, torch.tensor(indices))
