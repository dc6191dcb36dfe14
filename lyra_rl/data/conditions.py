"""Conditions for rollouts: a first frame, a prompt and a commanded camera trajectory.

The default source renders procedural scenes (``lyra_rl.data.scenes``, ``lyra_rl.data.renderer``), so a run
needs no data set; users
bring a JSONL manifest or a folder of images with prompts. Either way the condition with global index
``i`` is a pure function of ``i`` (and the seed), whatever the number of processes, and a
:class:`ConditionSource` keeps held-out conditions apart from the trained ones.
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

from ..camera import DIRECTIONS, Cameras, default_intrinsics, get_trajectory, random_trajectory, trajectory_preset
from .renderer import render
from .scenes import DEFAULT_NUM_BOXES, make_scene


@dataclass
class ConditionBatch:
    """Conditions of a batch.

    Attributes:
        images: first frames ``(B, 3, H, W)`` in [0, 1].
        prompts: ``B`` prompts.
        cameras: commanded cameras, ``B`` trajectories of ``T`` frames.
        ids: global condition indices ``(B,)`` (the GRPO group of each rollout).
        videos: where the source has them, the true videos ``(B, T, 3, H, W)`` in [0, 1] along the commanded
            cameras (SFT's targets; ``videos[:, 0]`` is ``images``), else ``None``.
    """

    images: Tensor
    prompts: list[str]
    cameras: Cameras
    ids: Tensor
    videos: Tensor | None = None

    def repeat(self, times: int) -> ConditionBatch:
        """Each condition ``times`` times in a row (the rollouts of a group), ``B * times`` in all."""
        cameras = Cameras(
            self.cameras.cam_from_world.repeat_interleave(times, 0),
            self.cameras.intrinsics.repeat_interleave(times, 0),
        )
        videos = None if self.videos is None else self.videos.repeat_interleave(times, 0)
        return ConditionBatch(
            self.images.repeat_interleave(times, 0),
            [p for p in self.prompts for _ in range(times)],
            cameras,
            self.ids.repeat_interleave(times),
            videos,
        )


#: How procedural conditions command their cameras: the seven presets in turn, or random smooth paths.
CAMERA_PATHS = ("presets", "random")
RANDOM_PATH = "random_path"


def procedural_prompt(num_boxes: int, direction: str) -> str:
    return f"a room with {num_boxes} boxes; the camera moves {direction.replace('_', ' ')}"


def procedural_prompts() -> list[str]:
    """Every prompt :func:`procedural_conditions` can give (to precompute their embeddings)."""
    return [procedural_prompt(n, d) for n in DEFAULT_NUM_BOXES for d in (*DIRECTIONS, RANDOM_PATH)]


def procedural_conditions(
    seed: int,
    indices: list[int],
    num_frames: int,
    height: int,
    width: int,
    videos: bool = False,
    camera_paths: str = "presets",
) -> ConditionBatch:
    """Procedural conditions with global indices ``indices``: scene ``seed * 100003 + i``, along preset
    ``i mod 7`` or (``camera_paths="random"``) a random smooth path drawn from ``(seed, i)``
    (:func:`~lyra_rl.camera.random_trajectory`); with ``videos``, each rendered along its whole path too."""
    if camera_paths not in CAMERA_PATHS:
        raise ValueError(f"camera_paths must be one of {CAMERA_PATHS}, got {camera_paths!r}")
    images, prompts, trajectories, renders = [], [], [], []
    K = default_intrinsics(height, width)
    for index in indices:
        scene = make_scene(seed * 100_003 + index)
        if camera_paths == "random":
            direction = RANDOM_PATH
            trajectory = random_trajectory(num_frames, torch.Generator().manual_seed(seed * 100_003 + index))
        else:
            direction = DIRECTIONS[index % len(DIRECTIONS)]
            trajectory = trajectory_preset(direction, num_frames)
        frames = render(scene, trajectory if videos else trajectory[:1], K, height, width).frames
        images.append(frames[0])
        renders.append(frames)
        prompts.append(procedural_prompt(scene.num_boxes, direction))
        trajectories.append(trajectory)
    cameras = Cameras(torch.stack(trajectories), K.expand(len(indices), num_frames, 3, 3).clone())
    return ConditionBatch(
        torch.stack(images), prompts, cameras, torch.tensor(indices), torch.stack(renders) if videos else None
    )


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
            direction = (
                direction_file.read_text().strip() if direction_file.is_file() else DIRECTIONS[k % len(DIRECTIONS)]
            )
            entries.append(ConditionEntry(image, prompt_file.read_text().strip(), direction))
    else:
        raise ValueError(f"conditions must be 'procedural', a .jsonl manifest or a folder of images, got {source}")
    if not entries:
        raise ValueError(f"no conditions in {source}")
    return entries


def user_conditions(
    entries: list[ConditionEntry], indices: list[int], num_frames: int, height: int, width: int
) -> ConditionBatch:
    """Conditions ``indices`` (modulo the number of entries), images resized to ``height x width``."""
    images, prompts, trajectories = [], [], []
    for index in indices:
        entry = entries[index % len(entries)]
        image = torch.from_numpy(np.asarray(iio.imread(entry.image))[..., :3].copy()).permute(2, 0, 1).float() / 255
        images.append(
            F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[
                0
            ].clamp(0, 1)
        )
        prompts.append(entry.prompt)
        trajectories.append(get_trajectory(entry.direction, num_frames))
    K = default_intrinsics(height, width)
    cameras = Cameras(torch.stack(trajectories), K.expand(len(indices), num_frames, 3, 3).clone())
    return ConditionBatch(torch.stack(images), prompts, cameras, torch.tensor(indices))


class ConditionSource:
    """The conditions of a run with their held-out split: ``conditions`` is ``'procedural'`` (trained scenes
    from ``seed``, held-out ones from ``seed + 1``), a JSONL manifest or a folder of images (the last
    ``held_out`` entries are held out, never trained on; see :func:`read_conditions`).

    Args:
        conditions: the source, as above.
        seed: the run's seed.
        held_out: how many held-out conditions evaluation uses.
        num_frames, height, width: the size of the videos conditioned on.
        videos: whether batches carry the true videos (SFT); only the procedural source has them.
        camera_paths: the procedural source's paths: ``"presets"`` or ``"random"`` (see :func:`procedural_conditions`).
    """

    def __init__(
        self,
        conditions: str,
        seed: int,
        held_out: int,
        num_frames: int,
        height: int,
        width: int,
        videos: bool = False,
        camera_paths: str = "presets",
    ):
        if videos and conditions != "procedural":
            raise ValueError(f"conditions {conditions!r} have no videos to train on: use 'procedural'")
        self.seed, self.size, self.videos, self.camera_paths = seed, (num_frames, height, width), videos, camera_paths
        self.entries = self.held_out_entries = None
        if conditions != "procedural":
            entries = read_conditions(conditions)
            if len(entries) <= held_out:
                raise ValueError(
                    f"{conditions} has {len(entries)} conditions: at least eval_conditions + 1 = "
                    f"{held_out + 1} are needed (the last {held_out} are held out)"
                )
            split = len(entries) - held_out
            self.entries, self.held_out_entries = entries[:split], entries[split:]

    def __call__(self, indices: list[int], held_out: bool = False) -> ConditionBatch:
        """The trained (or held-out) conditions with global indices ``indices``."""
        if self.entries is None:
            return procedural_conditions(self.seed + held_out, indices, *self.size, self.videos, self.camera_paths)
        return user_conditions(self.held_out_entries if held_out else self.entries, indices, *self.size)
