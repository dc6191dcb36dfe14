"""Checkpoints of a training run: atomic folders ``checkpoint-<step>``, the rolling ``last-step-<step>``, and the
random number generators.

A checkpoint folder holds the trained weights as the policy saves them (Wan: ``pytorch_lora_weights.safetensors``
as diffusers loads it and ``camera_modules.safetensors``) and ``trainer_state.pt``: the optimizer and
learning-rate schedule, the step, the logged history, the torch/numpy/python RNG states and the config. It is
written into a temporary folder, read back and checked (:func:`verify_checkpoint`), then renamed, so a crash or
a bad write leaves the last complete checkpoint the latest one; ``--resume`` skips a checkpoint that does not
load, with a warning, for the one before it.

Between the ``save_steps`` checkpoints, ``save_last_step`` writes the same state after every step as
``last-step-<step>`` and then deletes the one before it, so a run killed at any moment keeps every completed
step; a ``checkpoint-<step>`` removes the rolling states of the steps before it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError

TRAINER_STATE = "trainer_state.pt"
#: What :meth:`~lyra_rl.training.Trainer.save_checkpoint` writes into ``trainer_state.pt`` and resuming reads.
TRAINER_STATE_KEYS = ("optimizer", "lr_scheduler", "step", "history", "rng")
#: What a run writes into its ``output_dir`` (glob patterns): a fresh run refuses a folder holding any of them.
RUN_OUTPUTS = ("checkpoint-*", "last-step-*", ".tmp-*", "logs", "samples", "evaluation", "*_curve.png")
#: A checkpoint's folder name: ``checkpoint-<step>`` (every ``save_steps``) or ``last-step-<step>`` (rolling).
CHECKPOINT_NAME = re.compile(r"(checkpoint|last-step)-(\d+)")


class CheckpointError(InputError):
    """A checkpoint that does not load or holds a non-finite tensor; the message names the file."""


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


def write_checkpoint(output_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Runs ``write(folder)`` on a temporary folder, checks what it wrote (:func:`verify_checkpoint`), renames it
    ``output_dir/<name>`` (:data:`CHECKPOINT_NAME`), then deletes the rolling ``last-step-*`` of earlier steps.
    A check that fails removes the temporary folder and raises a ``RuntimeError`` naming the file (a fault of the
    run, not of its input): the latest checkpoint stays as it was."""
    step = checkpoint_step(Path(name))
    final, tmp = output_dir / name, output_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    try:
        verify_checkpoint(tmp, shown_as=final)
    except CheckpointError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{error}: checkpoint not written") from error
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for previous in output_dir.glob("last-step-*"):
        if CHECKPOINT_NAME.fullmatch(previous.name) and checkpoint_step(previous) < step:
            shutil.rmtree(previous, ignore_errors=True)
    return final


def checkpoint_step(checkpoint: Path) -> int:
    """The step of a folder named as :data:`CHECKPOINT_NAME` says."""
    return int(CHECKPOINT_NAME.fullmatch(checkpoint.name).group(2))


def _first_non_finite(state: Any, path: str = "") -> str | None:
    """The key path of the first floating-point tensor in ``state`` (nested dicts, lists) that is not finite."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        finite = not torch.is_tensor(state) or not state.is_floating_point() or bool(torch.isfinite(state).all())
        return None if finite else path
    for key, value in items:
        if (found := _first_non_finite(value, f"{path}.{key}" if path else str(key))) is not None:
            return found
    return None


def verify_checkpoint(folder: Path, shown_as: Path | None = None) -> None:
    """Reads a checkpoint folder back whole: every ``*.safetensors`` file and ``trainer_state.pt`` must load, the
    latter hold :data:`TRAINER_STATE_KEYS`, and every floating-point tensor of the weights and the optimizer
    state be finite. Raises :class:`CheckpointError` naming the file (under ``shown_as`` in place of ``folder``)."""
    shown = Path(shown_as or folder)
    for file in [*sorted(folder.glob("*.safetensors")), folder / TRAINER_STATE]:
        if file.is_file() and file.stat().st_size == 0:
            raise CheckpointError(f"{shown / file.name}: does not load (an empty file)")
    for file in sorted(folder.glob("*.safetensors")):
        try:
            tensors = load_file(file)
        except Exception as error:
            raise CheckpointError(f"{shown / file.name}: does not load ({type(error).__name__}: {error})") from error
        if (key := _first_non_finite(tensors)) is not None:
            raise CheckpointError(f"{shown / file.name}: {key} has non-finite values")
    try:
        state = read_trainer_state(folder)
    except Exception as error:
        detail = " ".join(str(error).split()[:30])
        raise CheckpointError(f"{shown / TRAINER_STATE}: does not load ({type(error).__name__}: {detail})") from error
    missing = [key for key in TRAINER_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{shown / TRAINER_STATE}: not a trainer state (no {', '.join(missing)})")
    if (key := _first_non_finite(state["optimizer"])) is not None:
        raise CheckpointError(f"{shown / TRAINER_STATE}: optimizer.{key} has non-finite values")


def read_trainer_state(checkpoint: Path) -> dict:
    """The ``trainer_state.pt`` of a checkpoint folder (tensors and plain types only: no pickled code runs)."""
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=True)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoint folders of ``output_dir`` (``checkpoint-*`` and ``last-step-*``) that hold a training state,
    highest step first, a ``checkpoint-<step>`` before a ``last-step-<step>`` (temporary folders of a crash are
    ignored; whether they load is :func:`verify_checkpoint`'s question)."""
    checkpoints = [
        p for p in Path(output_dir).glob("*-*") if CHECKPOINT_NAME.fullmatch(p.name) and (p / TRAINER_STATE).is_file()
    ]
    return sorted(checkpoints, key=lambda p: (checkpoint_step(p), p.name.startswith("checkpoint")), reverse=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint (or rolling last-step state) with the highest step (temporary folders of a crash
    are ignored)."""
    return next(iter(complete_checkpoints(output_dir)), None)


def previous_outputs(output_dir: str | Path) -> list[Path]:
    """What a run already wrote into ``output_dir`` (:data:`RUN_OUTPUTS`)."""
    return sorted({path for pattern in RUN_OUTPUTS for path in Path(output_dir).glob(pattern)})


def check_output_dir(output_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuses a fresh run (neither ``resume`` nor ``overwrite``) into a folder a run already wrote into: its
    checkpoints, TensorBoard files and samples would mix with the new run's. Raises :class:`InputError`."""
    found = previous_outputs(output_dir)
    if found and not (resume or overwrite):
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:3]) + (
            "" if len(found) <= 3 else ", ..."
        )
        raise InputError(
            f"output_dir {output_dir} holds a previous run's outputs ({names}): continue it with --resume true, "
            "or replace them with --overwrite_output_dir true"
        )


def remove_previous_outputs(output_dir: str | Path) -> None:
    """Deletes what a run wrote into ``output_dir`` (:data:`RUN_OUTPUTS`), and nothing else."""
    for path in previous_outputs(output_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def copy_tensor(param: nn.Parameter, value: torch.Tensor) -> None:
    """Copies ``value`` into the whole (unsharded) ``param``, in its dtype."""
    param.copy_(value.to(param.dtype))


@torch.no_grad()
def load_trained_weights(
    params: Mapping[str, nn.Parameter],
    state: Mapping[str, torch.Tensor],
    load_tensor: Callable[[nn.Parameter, torch.Tensor], None] = copy_tensor,
) -> None:
    """Loads whole trained weights ``state`` (what a policy's ``read_trained_weights`` returns) into the policy's
    ``trained_parameters()`` with ``load_tensor`` (a distributed backend's takes a shard); a missing or unexpected
    key is a ``KeyError`` naming it, a weight of another shape (e.g. another LoRA rank) a ``ValueError``, both
    raised before any weight is copied."""
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not fit the trained weights: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    reshaped = [key for key, value in state.items() if value.shape != params[key].shape]
    if reshaped:
        key = reshaped[0]
        raise ValueError(
            f"checkpoint does not fit the trained weights: {len(reshaped)} of other shapes, e.g. {key} "
            f"{tuple(state[key].shape)} in the checkpoint, {tuple(params[key].shape)} in the policy"
        )
    for key, value in state.items():
        load_tensor(params[key], value)
