"""What a training run logs: step metrics reduced over processes, TensorBoard scalars and the reward curve.

The logged names are listed in ``docs/training.md``: ``reward/<name>``, ``failed/<name>``, ``errors/<name>``
and ``diagnostics/<name>/<key>`` for the rollouts' rewards, ``eval/reward/<name>`` for the held-out samples,
each algorithm's loss terms, ``grad_norm``, ``learning_rate`` and ``time/<phase>``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor
from torch.profiler import record_function

from ..atomic import atomic_write
from ..reward import RewardSetOutput

#: ``name -> [(value, share of the local batch), ...]``, one pair per micro-batch (and trained step).
MicroBatchMetrics = dict[str, list[tuple[float, float]]]


@contextmanager
def timed_phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Times a phase of a step into ``timings["time/<name>"]`` and labels it ``lyra_rl/<name>`` for torch.profiler."""
    start = time.perf_counter()
    with record_function(f"lyra_rl/{name}"):
        yield
    timings[f"time/{name}"] = time.perf_counter() - start


def reduce_metrics(accelerator: Accelerator, metrics: MicroBatchMetrics) -> dict[str, float]:
    """Each metric over its micro-batches (weighted by their share) and over the processes: ``*_min`` and
    ``*_max`` by their minimum and maximum, the rest by their mean."""
    device, reduced = accelerator.device, {}
    for name, pairs in metrics.items():
        values, shares = torch.tensor(pairs).T
        if name.endswith(("_min", "_max")):
            reduce = torch.amin if name.endswith("_min") else torch.amax
            reduced[name] = float(reduce(accelerator.gather(reduce(values)[None].to(device))))
        else:
            reduced[name] = float(accelerator.gather(((values * shares).sum() / shares.sum())[None].to(device)).mean())
    return reduced


def reward_metrics(accelerator: Accelerator, scores: RewardSetOutput, total: Tensor | None = None) -> dict[str, float]:
    """Means over every process's videos: ``reward/total`` (``total``: the totals already gathered) and
    ``reward/<name>`` (rewards that could not score a video are left out), ``failed/<name>`` (the share they
    could not score), ``errors/<name>`` (the share on which they faulted, see :class:`~lyra_rl.reward.RewardSet`)
    and ``diagnostics/<name>``. A process whose videos gave no value of a diagnostic (every
    one failed) gathers NaNs for it, so that every process makes the same collectives."""
    device = accelerator.device
    total = accelerator.gather(scores.total.to(device)) if total is None else total
    logged = {"reward/total": float(total.nanmean())}
    for name, values in scores.rewards.items():
        logged[f"reward/{name}"] = float(accelerator.gather(values.to(device)).nanmean())
    for name, values in scores.failed.items():
        logged[f"failed/{name}"] = float(accelerator.gather(values.float().to(device)).mean())
    for name, values in scores.errors.items():
        logged[f"errors/{name}"] = float(accelerator.gather(values.float().to(device)).mean())
    names = scores.diagnostics.keys()
    if accelerator.num_processes > 1:
        names = {name for keys in gather_object([sorted(names)]) for name in keys}
    missing = torch.full_like(scores.total, math.nan)
    for name in sorted(names):
        values = scores.diagnostics.get(name, missing)
        logged[f"diagnostics/{name}"] = float(accelerator.gather(values.to(device)).nanmean())
    return logged


class TensorBoard:
    """Scalars of the main process into ``log_dir`` (``tensorboard --logdir``); other processes write nothing."""

    def __init__(self, log_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir)

    def add(self, logged: dict[str, float], step: int) -> None:
        """Every finite scalar of ``logged`` (but ``step``) at ``step``."""
        if self.writer is None:
            return
        for name, value in logged.items():
            if name != "step" and math.isfinite(value):
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Curve(NamedTuple):
    """What a trainer plots at the end of training: the metrics named ``prefix...`` per step and, dashed, the
    held-out metric ``held_out`` at each evaluation, into ``file_name`` (under the run folder)."""

    file_name: str
    prefix: str
    label: str
    held_out: str


def plot_curves(history: list[dict[str, float]], path: Path, curve: Curve) -> Path:
    """``curve``'s metrics of ``history`` as a PNG at ``path``, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for name in [k for k in history[0] if k.startswith(curve.prefix)]:
        ax.plot(steps, [h[name] for h in history], label=name.removeprefix(curve.prefix) or name)
    evaluated = [h for h in history if curve.held_out in h]
    if evaluated:
        steps, values = [h["step"] for h in evaluated], [h[curve.held_out] for h in evaluated]
        ax.plot(steps, values, "k--o", markersize=3, label=f"{curve.held_out.removeprefix('eval/')}, held-out")
    ax.set_xlabel("step")
    ax.set_ylabel(curve.label)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
