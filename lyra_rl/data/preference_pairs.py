"""Preference pairs for offline Flow-DPO: a JSONL manifest of (condition, winner video, loser video).

One object per line: ``{"image": PATH, "prompt": TEXT, "direction": PRESET_OR_TRAJECTORY_FILE, "winner": VIDEO,
"loser": VIDEO}`` (paths relative to the manifest), e.g. two videos of one condition ranked earlier with
``lyra-rl score`` (Epipolar-DPO ranked its pairs by Sampson error this way). Both videos are read along the
condition's commanded cameras: their first ``num_frames`` frames, resized to the run's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VideoError
from ..video import probe_video, read_video
from .conditions import ConditionBatch, ConditionEntry, checked_entries, manifest_entry, user_conditions


@dataclass(frozen=True)
class PreferencePair:
    """A condition and two videos of it, the winner preferred."""

    condition: ConditionEntry
    winner: Path
    loser: Path


def _pair(source: Path, number: int, line: str, num_frames: int) -> PreferencePair | str:
    """Line ``number`` of a pairs manifest, or what is wrong with it as ``FILE:LINE: ...``."""
    condition = manifest_entry(source, number, line)  # the line's JSON, image, prompt and direction
    if isinstance(condition, str):
        return condition
    where, row = f"{source}:{number}", json.loads(line)
    videos = []
    for key in ("winner", "loser"):
        if not isinstance(row.get(key), str):
            return f"{where}: {key} must be a video path, got {row.get(key)!r}"
        path = source.parent / row[key]
        if not path.is_file():
            return f"{where}: {key} video {path} does not exist"
        try:
            frames = probe_video(path, num_frames)
        except VideoError as error:
            return f"{where}: {error}"
        if frames < num_frames:
            return f"{where}: {key} video {path} has {frames} frames; the run's num_frames is {num_frames}"
        videos.append(path)
    return PreferencePair(condition, *videos)


def read_preference_pairs(source: str | Path, num_frames: int) -> list[PreferencePair]:
    """Every pair of a JSONL manifest (see the module), each checked before any is used: its condition as
    :func:`~lyra_rl.data.conditions.read_conditions` checks one, both videos decoding with ``num_frames`` frames
    or more.

    Raises:
        ValueError: for the first bad line as ``FILE:LINE: what is wrong``, with how many more there are.
        FileNotFoundError: for a manifest that does not exist.
    """
    source = Path(source)
    if source.suffix != ".jsonl":
        raise ValueError(f"pairs {source}: expected a .jsonl manifest of preference pairs")
    if not source.is_file():
        raise FileNotFoundError(f"pairs {source}: no such manifest")
    lines = source.read_text().split("\n")
    pairs = [_pair(source, n, line, num_frames) for n, line in enumerate(lines, 1) if line.strip()]
    return checked_entries(pairs, source, "preference pairs")


def read_clip(path: Path, num_frames: int, height: int, width: int) -> Tensor:
    """The first ``num_frames`` frames of a video, resized to ``height x width``: ``(T, 3, H, W)`` in [0, 1]."""
    video, _ = read_video(path, num_frames)
    return F.interpolate(video, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def pair_batch(
    pairs: list[PreferencePair], indices: list[int], num_frames: int, height: int, width: int
) -> tuple[ConditionBatch, list[Path], list[Path]]:
    """Pairs ``indices`` (modulo their number): their conditions as a batch (``ids``: the indices) and the paths
    of their winners and losers."""
    chosen = [pairs[i % len(pairs)] for i in indices]
    batch = user_conditions([pair.condition for pair in chosen], list(range(len(chosen))), num_frames, height, width)
    batch.ids = torch.tensor(indices)
    return batch, [pair.winner for pair in chosen], [pair.loser for pair in chosen]
