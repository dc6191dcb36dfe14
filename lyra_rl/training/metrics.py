"""What a training run logs: step metrics reduced over processes, TensorBoard scalars and the reward curve.

The logged names are listed in ``docs/training.md``: ``reward/<name>``, ``failed/<name>`` and
``diagnostics/<name>/<key>`` for the rollouts' rewards, ``eval/reward/<name>`` for the held-out samples,
each algorithm's loss terms, ``grad_norm``, ``learning_rate`` and ``time/<phase>``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from torch.profiler import record_function

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


def reward_metrics(accelerator: Accelerator, scores: RewardSetOutput) -> dict[str, float]:
    """Means over every process's videos: ``reward/total`` and ``reward/<name>`` (rewards that could not score
    a video are left out), ``failed/<name>`` (the share they could not score) and ``diagnostics/<name>``."""
    device = accelerator.device
    logged = {"reward/total": float(accelerator.gather(scores.total.to(device)).nanmean())}
    for name, values in scores.rewards.items():
        logged[f"reward/{name}"] = float(accelerator.gather(values.to(device)).nanmean())
    for name, values in scores.failed.items():
        logged[f"failed/{name}"] = float(accelerator.gather(values.float().to(device)).mean())
    for name, values in scores.diagnostics.items():
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


def plot_curves(history: list[dict[str, float]], path: Path, prefix: str, ylabel: str) -> Path:
    """The logged metrics named ``prefix...`` per step (e.g. every reward of the rollouts, or the loss) and the
    held-out evaluation's total reward, where there is one, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for name in [k for k in history[0] if k.startswith(prefix)]:
        ax.plot(steps, [h[name] for h in history], label=name.removeprefix(prefix) or name)
    evaluated = [h for h in history if "eval/reward/total" in h]
    if evaluated:
        ax.plot([h["step"] for h in evaluated], [h["eval/reward/total"] for h in evaluated], "k--o", markersize=3,
                label="total reward, held-out (ODE)")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
