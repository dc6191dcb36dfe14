"""Conditions for rollouts: a first frame, a prompt and a commanded camera trajectory.

The default source renders procedural scenes (``lyra_rl.data.scenes``, ``lyra_rl.data.renderer``), so a run
needs no data set; users bring a JSONL manifest or a folder of images with prompts, a MultiCamVideo folder
(:mod:`lyra_rl.data.multicam`, with its videos) or its latent cache (:mod:`lyra_rl.data.latent_cache`). Either way
the condition with global index ``i`` is a pure function of ``i`` (and the seed), whatever the number of
processes, and a :class:`ConditionSource` keeps held-out conditions apart from the trained ones.
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

from ..camera import (
    DIRECTIONS,
    PRESETS,
    Cameras,
    default_intrinsics,
    get_trajectory,
    load_trajectory,
    random_trajectory,
    trajectory_preset,
)
from ..errors import TrajectoryError
from .latent_cache import CachedClip, is_cache_folder, load_cached_clip, read_manifest
from .multicam import MultiCamClip, is_multicam_folder, list_clips, load_clip
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
        latents: from a latent cache, the latents ``(B, C, k, h, w)`` the policy generates for the true videos
            (``policy.generated_latents``: SFT's targets, in place of ``videos``), else ``None``.
    """

    images: Tensor
    prompts: list[str]
    cameras: Cameras
    ids: Tensor
    videos: Tensor | None = None
    latents: Tensor | None = None

    def repeat(self, times: int) -> ConditionBatch:
        """Each condition ``times`` times in a row (the rollouts of a group), ``B * times`` in all."""
        cameras = Cameras(
            self.cameras.cam_from_world.repeat_interleave(times, 0),
            self.cameras.intrinsics.repeat_interleave(times, 0),
        )
        videos, latents = (None if x is None else x.repeat_interleave(times, 0) for x in (self.videos, self.latents))
        return ConditionBatch(
            self.images.repeat_interleave(times, 0),
            [p for p in self.prompts for _ in range(times)],
            cameras,
            self.ids.repeat_interleave(times),
            videos,
            latents,
        )


#: How procedural conditions command their cameras: the seven presets in turn, or random smooth paths.
CAMERA_PATHS = ("presets", "random")
RANDOM_PATH = "random_path"


def procedural_prompt(num_boxes: int, direction: str) -> str:
    return f"a room with {num_boxes} boxes; the camera moves {direction.replace('_', ' ')}"


def procedural_prompts() -> list[str]:
    """Every prompt :func:`procedural_conditions` can give (to precompute their embeddings)."""
    return [procedural_prompt(n, d) for n in DEFAULT_NUM_BOXES for d in (*DIRECTIONS, RANDOM_PATH)]


def texture_size_for(height: int, width: int) -> int:
    """Texture side of procedural scenes rendered at ``height x width``: the power of two at or above the larger
    side, within ``[128, 256]``.

    Sizes 128 and 256 draw the same random textures at two resolutions (their noise octaves stop at 64 cells),
    and at 64x96 they render within 0.004 mean absolute difference while 128 is 3x cheaper to build; below
    128 the textures themselves change.
    """
    return min(256, max(128, 1 << (max(height, width) - 1).bit_length()))


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
        scene = make_scene(seed * 100_003 + index, texture_size=texture_size_for(height, width))
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


def image_problem(path: Path) -> str | None:
    """What is wrong with a condition's first-frame image (``None``: nothing): missing, not decodable, not RGB."""
    if not path.is_file():
        return f"image {path} does not exist"
    try:
        shape = np.asarray(iio.imread(path)).shape
    except Exception as error:
        return f"image {path} does not decode ({type(error).__name__}: {error})"
    if len(shape) != 3 or shape[-1] not in (3, 4):
        return f"image {path} has shape {shape}, not an RGB or RGBA image (H, W, 3|4)"
    return None


def direction_problem(direction: str) -> str | None:
    """What is wrong with a condition's commanded path (``None``: nothing): neither a preset nor a trajectory
    file that loads as a camera path (:class:`~lyra_rl.errors.TrajectoryError`)."""
    if direction in PRESETS:
        return None
    if not Path(direction).exists():
        return f"direction {direction!r} is neither a preset ({', '.join(PRESETS)}) nor a trajectory file"
    try:
        load_trajectory(direction)
    except TrajectoryError as error:
        return str(error)
    except Exception as error:
        return f"trajectory {direction} does not load ({type(error).__name__}: {error})"
    return None


def manifest_entry(source: Path, number: int, line: str) -> ConditionEntry | str:
    """Line ``number`` of a JSONL manifest as an entry, or what is wrong with it as ``FILE:LINE: ...``."""
    where = f"{source}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return f"{where}: not JSON: {error.msg} (column {error.colno})"
    if not isinstance(row, dict):
        return f"{where}: expected an object with image, prompt and direction, got {type(row).__name__}"
    missing = {"image", "prompt", "direction"} - set(row)
    if missing:
        return f"{where}: missing {sorted(missing)}"
    wrong = [key for key in ("image", "prompt", "direction") if not isinstance(row[key], str)]
    if wrong:
        return f"{where}: {wrong[0]} must be a string, got {row[wrong[0]]!r}"
    direction = row["direction"] if row["direction"] in PRESETS else str(source.parent / row["direction"])
    entry = ConditionEntry(source.parent / row["image"], row["prompt"], direction)
    problem = image_problem(entry.image) or direction_problem(entry.direction)
    return entry if problem is None else f"{where}: {problem}"


def _folder_entry(image: Path, k: int) -> ConditionEntry | str:
    """An image of a folder source with its prompt and direction files, or what is wrong as ``FILE: ...``."""
    prompt_file, direction_file = image.with_suffix(".txt"), image.with_suffix(".direction")
    if not prompt_file.is_file():
        return f"{image}: no prompt file {prompt_file.name} beside it"
    if problem := image_problem(image):
        return f"{image}: {problem}"
    if direction_file.is_file():
        direction = direction_file.read_text().strip()
        direction = direction if direction in PRESETS else str(image.parent / direction)
        if problem := direction_problem(direction):
            return f"{direction_file}:1: {problem}"
    else:
        direction = DIRECTIONS[k % len(DIRECTIONS)]
    return ConditionEntry(image, prompt_file.read_text().strip(), direction)


def checked_entries(entries: list, source: Path, what: str) -> list:
    """The entries read from ``source``, where each bad one is what is wrong with it (a string): a
    ``ValueError`` for the first, with how many more there are, or for none at all."""
    problems = [entry for entry in entries if isinstance(entry, str)]
    if problems:
        more = f" (and {len(problems) - 1} more bad entries in {source})" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)
    if not entries:
        raise ValueError(f"no {what} in {source}")
    return entries


def read_conditions(source: str | Path) -> list[ConditionEntry]:
    """User conditions from a JSONL manifest or a folder of images, every entry checked before any is used.

    - JSONL: one ``{"image": PATH, "prompt": TEXT, "direction": PRESET_OR_TRAJECTORY_FILE}`` per line
      (relative paths are relative to the manifest);
    - folder: every ``*.png``/``*.jpg`` with its prompt in ``<stem>.txt`` beside it and, optionally, its
      direction in ``<stem>.direction`` (a preset or a trajectory file relative to the folder); images without
      one cycle through the seven presets.

    Every entry's image must exist and decode to RGB(A), and its direction be a preset or a trajectory file
    that loads (:func:`~lyra_rl.camera.load_trajectory`) as a camera path; trajectory files are resampled to
    the run's ``num_frames``.

    Raises:
        ValueError: for the first bad entry as ``FILE:LINE: what is wrong`` (a folder's: ``IMAGE: ...``), with
            how many more there are.
        FileNotFoundError: for a manifest or folder that does not exist.
    """
    source = Path(source)
    if source.suffix == ".jsonl":
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such conditions manifest")
        lines = source.read_text().split("\n")  # not splitlines(): its other separators would shift the numbers
        entries = [manifest_entry(source, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    elif source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        entries = [_folder_entry(image, k) for k, image in enumerate(images)]
    elif source.exists():
        raise ValueError(
            f"conditions {source}: expected 'procedural', a .jsonl manifest, a folder of images, a MultiCamVideo "
            "folder or its latent cache"
        )
    else:
        raise FileNotFoundError(f"conditions {source}: no such file or folder")
    return checked_entries(entries, source, "conditions")


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
        trajectories.append(get_trajectory(entry.direction, num_frames, resample=True))
    K = default_intrinsics(height, width)
    cameras = Cameras(torch.stack(trajectories), K.expand(len(indices), num_frames, 3, 3).clone())
    return ConditionBatch(torch.stack(images), prompts, cameras, torch.tensor(indices))


def multicam_conditions(
    clips: list[MultiCamClip], indices: list[int], num_frames: int, height: int, width: int, videos: bool = False
) -> ConditionBatch:
    """MultiCamVideo conditions ``indices`` (modulo the number of clips): each clip's first frame, prompt and
    cameras (:func:`~lyra_rl.data.multicam.load_clip`, frames spanning the clip) and, with ``videos``, its frames."""
    loaded = [load_clip(clips[i % len(clips)], num_frames, height, width, video=videos) for i in indices]
    frames, cameras, prompts = zip(*loaded)
    cameras = Cameras(torch.cat([c.cam_from_world for c in cameras]), torch.cat([c.intrinsics for c in cameras]))
    return ConditionBatch(
        torch.stack([f[0] for f in frames]),
        list(prompts),
        cameras,
        torch.tensor(indices),
        torch.stack(frames) if videos else None,
    )


def cached_conditions(folder: str | Path, clips: list[CachedClip], indices: list[int]) -> ConditionBatch:
    """Cached MultiCamVideo conditions ``indices`` (modulo the number of clips), with their latents."""
    loaded = [load_cached_clip(Path(folder) / clips[i % len(clips)].file) for i in indices]
    tensors = {key: torch.stack([t[key] for t, _ in loaded]) for key in ("image", "cam_from_world", "intrinsics")}
    return ConditionBatch(
        tensors["image"],
        [metadata["prompt"] for _, metadata in loaded],
        Cameras(tensors["cam_from_world"], tensors["intrinsics"]),
        torch.tensor(indices),
        latents=torch.stack([t["latents"] for t, _ in loaded]),
    )


def _split(entries: list, held_out: int, source: str, scene_of=None) -> tuple[list, list]:
    """The trained and held-out entries: the last ``held_out`` are held out; with ``scene_of``, the trained ones
    are those of the other scenes (a held-out clip's scene is never trained on, from any camera)."""
    split = max(len(entries) - held_out, 0)
    held = entries[split:]
    held_scenes = {scene_of(e) for e in held} if scene_of else set()
    trained = [e for e in entries[:split] if not scene_of or scene_of(e) not in held_scenes]
    if trained:
        return trained, held
    if scene_of:
        raise ValueError(
            f"{source} has {len(entries)} clips in {len({scene_of(e) for e in entries})} scenes: the last "
            f"{held_out} (eval_conditions) and every other clip of their scenes are held out, which leaves none to "
            "train on: lower eval_conditions or add scenes"
        )
    raise ValueError(
        f"{source} has {len(entries)} conditions: at least eval_conditions + 1 = {held_out + 1} are needed "
        f"(the last {held_out} are held out)"
    )


def source_kind(conditions: str) -> str:
    """``'procedural'``, ``'cache'`` (a latent cache folder), ``'multicam'`` (a MultiCamVideo folder) or
    ``'user'`` (a JSONL manifest or a folder of images)."""
    if conditions == "procedural":
        return "procedural"
    if is_cache_folder(conditions):
        return "cache"
    return "multicam" if is_multicam_folder(conditions) else "user"


def condition_prompts(conditions: str) -> list[str]:
    """Every prompt a source's conditions can give (to precompute their embeddings)."""
    kind = source_kind(conditions)
    if kind == "procedural":
        return procedural_prompts()
    if kind == "cache":
        return [clip.prompt for clip in read_manifest(conditions)[1]]
    if kind == "multicam":
        return [clip.prompt for clip in list_clips(conditions)]
    return [entry.prompt for entry in read_conditions(conditions)]


class ConditionSource:
    """The conditions of a run with their held-out split: ``conditions`` is ``'procedural'`` (trained scenes
    from ``seed``, held-out ones from ``seed + 1``), a JSONL manifest or a folder of images (see
    :func:`read_conditions`), a MultiCamVideo folder (see :mod:`lyra_rl.data.multicam`) or a latent cache of one
    (``recipes/preprocess.py``, see :mod:`lyra_rl.data.latent_cache`). Of the user sources the last ``held_out``
    entries are held out, never trained on; of MultiCamVideo and its cache, neither is any other clip of their
    scenes. Folders are checked here, before training starts.

    Args:
        conditions: the source, as above.
        seed: the run's seed.
        held_out: how many held-out conditions evaluation uses.
        num_frames, height, width: the size of the videos conditioned on (a cache's must be these).
        videos: whether batches carry the true videos (SFT): the procedural and MultiCamVideo sources render or
            read them, a cache gives their latents (``ConditionBatch.latents``) instead.
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
        self.kind = source_kind(conditions)
        if videos and self.kind == "user":
            raise ValueError(
                f"conditions {conditions!r} have no videos to train on: use 'procedural', a MultiCamVideo folder "
                "or its latent cache (recipes/preprocess.py)"
            )
        self.folder, self.seed, self.size = Path(conditions), seed, (num_frames, height, width)
        self.videos, self.camera_paths = videos, camera_paths
        self.entries = self.held_out_entries = None
        if self.kind == "cache":
            settings, clips = read_manifest(conditions)
            cached = {key: settings[key] for key in ("num_frames", "height", "width")}
            if cached != dict(zip(("num_frames", "height", "width"), self.size)):
                raise ValueError(
                    f"{self.folder / 'cache.json'} caches {cached}, the run asks for num_frames={num_frames}, "
                    f"height={height}, width={width}: preprocess at the run's size"
                )
            self.entries, self.held_out_entries = _split(clips, held_out, conditions, lambda clip: clip.scene)
        elif self.kind == "multicam":
            clips = list_clips(conditions)
            self.entries, self.held_out_entries = _split(clips, held_out, conditions, lambda clip: clip.scene)
        elif self.kind == "user":
            self.entries, self.held_out_entries = _split(read_conditions(conditions), held_out, conditions)

    @classmethod
    def from_config(cls, config, videos: bool = False, camera_paths: str | None = None) -> ConditionSource:
        """The source of a training config's conditions (``lyra_rl.training.TrainingConfig``: ``conditions``,
        ``seed``, ``eval_conditions`` held out, the video size, ``camera_paths`` unless given)."""
        return cls(
            config.conditions,
            config.seed,
            config.eval_conditions,
            config.num_frames,
            config.height,
            config.width,
            videos,
            camera_paths or config.camera_paths,
        )

    def __call__(self, indices: list[int], held_out: bool = False) -> ConditionBatch:
        """The trained (or held-out) conditions with global indices ``indices``."""
        entries = self.held_out_entries if held_out else self.entries
        if self.kind == "procedural":
            return procedural_conditions(self.seed + held_out, indices, *self.size, self.videos, self.camera_paths)
        if self.kind == "cache":
            return cached_conditions(self.folder, entries, indices)
        if self.kind == "multicam":
            return multicam_conditions(entries, indices, *self.size, self.videos)
        return user_conditions(entries, indices, *self.size)
