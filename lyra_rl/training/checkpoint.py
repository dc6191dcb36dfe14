"""Checkpoints of a training run: atomic folders ``checkpoint-<step>`` and the random number generators.

A checkpoint folder holds the trained weights as the policy saves them (Wan: ``pytorch_lora_weights.safetensors``
as diffusers loads it and ``camera_modules.safetensors``) and ``trainer_state.pt``: the optimizer and
learning-rate schedule, the step, the logged history, the torch/numpy/python RNG states and the config. It is
written into a temporary folder and renamed, so a crash leaves the last complete checkpoint the latest one.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

TRAINER_STATE = "trainer_state.pt"


def rng_state() -> dict:
    """The global torch, numpy and python RNG states, in types ``torch.load(weights_only=True)`` reads."""
    name, key, *rest = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (name, key.tolist(), *rest), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))
    random.setstate(state["python"])


def write_checkpoint(output_dir: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Runs ``write(folder)`` on a temporary folder, then renames it ``output_dir/checkpoint-<step>``."""
    final, tmp = output_dir / f"checkpoint-{step}", output_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def read_trainer_state(checkpoint: Path) -> dict:
    """The ``trainer_state.pt`` of a checkpoint folder (tensors and plain types only: no pickled code runs)."""
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (temporary folders of a crash are ignored)."""
    checkpoints = [p for p in Path(output_dir).glob("checkpoint-*") if (p / TRAINER_STATE).is_file()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[1]), default=None)
