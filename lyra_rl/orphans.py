"""Processes that do not outlive what started them.

``accelerate launch`` (as torchrun and deepspeed do) starts the training processes as its children; killed
(``kill -9``, a scheduler's preemption), it would leave them training on alone, writing into the run folder
that a restarted launch writes into too. A :class:`~lyra_rl.reward.RewardSet`'s worker processes, left by a
killed trainer, would wait for work forever. On Linux, :func:`die_with_parent` asks the kernel to send the
process ``SIGTERM`` when its parent dies (``PR_SET_PDEATHSIG``); :func:`exit_with_launcher` does so only when
the parent is such a launcher, so that a recipe run from a shell (under ``nohup``, say) outlives the shell.
Elsewhere both do nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

#: Programs that launch training processes, as they appear among the first words of their command line.
LAUNCHERS = ("accelerate", "accelerate-launch", "torchrun", "torch.distributed.run", "deepspeed")
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Makes this process receive ``SIGTERM`` when its parent dies (at once if it already has); whether the
    kernel took the request (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def is_launcher(command: list[str]) -> bool:
    """Whether a command line (its words) runs one of :data:`LAUNCHERS` (directly, by its script, or ``-m``)."""
    return any(Path(word).name in LAUNCHERS for word in command[:3])


def parent_command() -> list[str]:
    """The words of the parent process's command line (empty where ``/proc`` does not say)."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [word.decode(errors="replace") for word in raw.split(b"\0") if word]


def exit_with_launcher() -> bool:
    """:func:`die_with_parent` when the parent is a launcher (:func:`is_launcher`); whether it was asked."""
    return is_launcher(parent_command()) and die_with_parent()
