"""The reward protocol, reward sets, and the plugin registry.

A reward scores a batch of rollouts. Rewards are found by name through the ``lyra_rl.rewards`` entry
point group (the built-in rewards register there exactly as a third-party package does) or by a dotted
path ``package.module:ClassName``.

Contract:
    - Input: ``videos (B, T, 3, H, W)`` float in ``[0, 1]``, :class:`~lyra_rl.camera.Cameras` with
      ``B`` trajectories of ``T`` frames (the *commanded* cameras), ``B`` prompts and optionally the
      conditioning images ``(B, 3, H, W)``. Bad input raises one ``ValueError`` at this boundary.
    - Output: :class:`RewardOutput` with ``rewards (B,)`` (higher is better), ``failed (B,)`` and named
      diagnostics ``(B,)``. A video the reward cannot score (too few matches, degenerate estimation)
      gets the reward's documented ``floor`` and ``failed=True``: a reward never raises inside a
      training step. ``NaN`` means *not applicable* (e.g. triangulation on a pure rotation) and is
      left out of the weighted sum, as trl does for rewards that return ``None``.

Faults: a :class:`RewardSet` contains a reward that breaks the contract on a video (raises anything but
:class:`EstimationError`, returns ``inf`` or an output of the wrong type or shape): that video gets the
reward's floor, ``failed=True`` and ``errors=True`` (logged as ``errors/<name>``), a warning names the reward
the first time, and the other rewards and videos are scored as usual. So does a reward that takes longer than
its timeout on a video (``RewardSet(timeouts=...)``). ``errors="raise"`` raises instead, for debugging a plugin.
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .camera import Cameras
from .orphans import die_with_parent

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lyra_rl.rewards"


#: What a :class:`RewardSet` does with a reward's fault: score the video at the reward's floor, or raise.
REWARD_ERRORS = ("contain", "raise")


class EstimationError(RuntimeError):
    """A reward could not estimate what it needs from a video (too few matches, degenerate geometry)."""


class RewardError(RuntimeError):
    """A reward broke its output contract (an infinite value, an output of the wrong type or shape); raised
    by a :class:`RewardSet` with ``errors="raise"``, contained otherwise."""


class RewardTimeout(Exception):
    """A reward took longer than its timeout on one video (raised inside it by :func:`time_limit`)."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raises :class:`RewardTimeout` inside the block once it has run ``seconds`` (``None`` or 0: no limit).

    A real-time timer (``SIGALRM``) of the process's main thread, where a :class:`RewardSet` scores (in this
    process or in a worker): it interrupts Python code and sleeps, and code inside a native call when the call
    returns. Elsewhere (another thread, a platform without ``setitimer``) the block runs without a limit."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise RewardTimeout(f"took longer than {seconds:g} s (its timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class RewardOutput:
    """What a reward returns for a batch.

    Attributes:
        rewards: ``(B,)`` float, higher is better; ``floor`` where failed, NaN where not applicable.
        failed: ``(B,)`` bool, True where the reward could not score the video.
        diagnostics: named ``(B,)`` float tensors (pose errors, match counts, ...).
    """

    rewards: Tensor
    failed: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Reward(Protocol):
    """A reward plugin. ``cache`` is a per-video dict shared by all rewards of a set (see VideoReward)."""

    name: str
    floor: float

    def __call__(
        self,
        videos: Tensor,
        cameras: Cameras,
        prompts: Sequence[str],
        *,
        images: Tensor | None = None,
        caches: Sequence[dict] | None = None,
    ) -> RewardOutput: ...


def validate_inputs(videos: Tensor, cameras: Cameras, prompts: Sequence[str], images: Tensor | None = None) -> None:
    """Raises one clear ``ValueError`` for inputs that break the reward contract."""
    if not isinstance(videos, Tensor) or videos.ndim != 5 or videos.shape[2] != 3:
        shape = tuple(videos.shape) if isinstance(videos, Tensor) else type(videos).__name__
        raise ValueError(f"videos must be a tensor of shape (B, T, 3, H, W), got {shape}")
    batch, frames = videos.shape[:2]
    if frames < 2:
        raise ValueError(f"videos need at least 2 frames to be scored, got T={frames}")
    if not videos.is_floating_point() or not torch.isfinite(videos).all():
        raise ValueError("videos must be finite floating-point tensors in [0, 1] (found NaN/inf or integers)")
    if videos.min() < -1e-3 or videos.max() > 1 + 1e-3:
        raise ValueError(f"videos must lie in [0, 1], got range [{videos.min():.3f}, {videos.max():.3f}]")
    if cameras.batch_size != batch or cameras.num_frames != frames:
        raise ValueError(
            f"cameras describe {cameras.batch_size} trajectories of {cameras.num_frames} frames but videos are "
            f"{batch} clips of {frames} frames; the trajectory length must equal T"
        )
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for {batch} videos")
    if images is not None and (images.ndim != 4 or images.shape[0] != batch or images.shape[1] != 3):
        raise ValueError(f"images must have shape (B, 3, H, W) with B={batch}, got {tuple(images.shape)}")


class VideoReward:
    """Base class for rewards that score each video of a batch on its own.

    Subclasses set ``name`` and ``floor`` and implement :meth:`score_video`, which raises
    :class:`EstimationError` on a video it cannot score; the batch call turns that into ``floor`` with
    ``failed=True`` (logged at debug level; the trainer logs the failed fraction per step). Any other
    exception is a bug and propagates (a :class:`RewardSet` contains it: see the module's notes). Inputs are
    moved to the CPU once, here.
    """

    name: str = "reward"
    floor: float = 0.0

    def score_video(
        self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image: Tensor | None, cache: dict
    ) -> tuple[float, dict[str, float]]:
        """Scores one video ``(T, 3, H, W)`` against ``cam_from_world (T, 4, 4)`` and ``intrinsics (T, 3, 3)``.

        Returns:
            The reward (NaN if not applicable) and named diagnostics.
        """
        raise NotImplementedError

    def __call__(
        self,
        videos: Tensor,
        cameras: Cameras,
        prompts: Sequence[str],
        *,
        images: Tensor | None = None,
        caches: Sequence[dict] | None = None,
    ) -> RewardOutput:
        validate_inputs(videos, cameras, prompts, images)
        videos, cameras = videos.detach().cpu(), cameras.to("cpu")
        images = None if images is None else images.detach().cpu()
        caches = caches if caches is not None else [{} for _ in range(len(videos))]
        values, failed, diags = [], [], []
        for b in range(len(videos)):
            try:
                value, diag = self.score_video(
                    videos[b],
                    cameras.cam_from_world[b],
                    cameras.intrinsics[b],
                    image=None if images is None else images[b],
                    cache=caches[b],
                )
                ok = True
            except EstimationError as error:
                logger.debug("%s could not score video %d (%s); using floor %.3g", self.name, b, error, self.floor)
                value, diag, ok = self.floor, {}, False
            values.append(value)
            failed.append(not ok)
            diags.append(diag)
        keys = sorted({k for d in diags for k in d})
        diagnostics = {k: torch.tensor([d.get(k, math.nan) for d in diags], dtype=torch.float32) for k in keys}
        return RewardOutput(torch.tensor(values, dtype=torch.float32), torch.tensor(failed), diagnostics)


def available_rewards() -> list[str]:
    """Names registered in the ``lyra_rl.rewards`` entry point group."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def resolve_reward_class(name: str) -> type:
    """Finds a reward class by entry-point name or dotted path ``package.module:ClassName``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import reward {name!r}: {error}") from error
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        raise ValueError(
            f"unknown reward {name!r}; registered rewards: {', '.join(available_rewards()) or 'none'} "
            f"(or give a dotted path 'package.module:ClassName')"
        )
    return matches[0].load()


def load_reward(name: str, **kwargs: Any) -> Reward:
    """Instantiates a reward by name or dotted path with keyword arguments from the config."""
    reward = resolve_reward_class(name)(**kwargs)
    if not isinstance(reward, Reward):
        raise TypeError(f"{name!r} does not implement the Reward protocol (name, floor, __call__)")
    return reward


@dataclass
class RewardSetOutput:
    """Scores of a reward set for a batch.

    Attributes:
        total: ``(B,)`` weighted sum of the rewards, NaN (not applicable) terms left out.
        rewards: reward name -> ``(B,)``.
        failed: reward name -> ``(B,)`` bool, True where the reward could not score the video (its floor).
        diagnostics: ``"reward/diagnostic"`` -> ``(B,)``.
        errors: reward name -> ``(B,)`` bool, True where the reward broke its contract on the video (raised,
            returned ``inf`` or a wrong output): those are ``failed`` too.
    """

    total: Tensor
    rewards: dict[str, Tensor]
    failed: dict[str, Tensor]
    diagnostics: dict[str, Tensor]
    errors: dict[str, Tensor] = field(default_factory=dict)


def output_problem(output: object) -> str | None:
    """What is wrong with a reward's output for one video (``None``: nothing): not a :class:`RewardOutput`,
    a field not of shape ``(1,)``, an infinite reward (NaN means not applicable and is allowed)."""
    if not isinstance(output, RewardOutput):
        return f"returned {type(output).__name__}, not a RewardOutput"
    fields = {"rewards": output.rewards, "failed": output.failed}
    fields.update({f"diagnostic {key!r}": value for key, value in output.diagnostics.items()})
    for name, value in fields.items():
        if not isinstance(value, Tensor) or value.shape != (1,):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            return f"returned {name} of shape {shape} for one video, expected (1,)"
    if torch.isinf(output.rewards.float()).any():
        return f"returned an infinite reward ({float(output.rewards[0])})"
    return None


def _score_one(
    rewards: Sequence[Reward],
    video: Tensor,
    cameras: Cameras,
    prompt: str,
    image: Tensor | None,
    contain: bool = True,
    timeouts: Sequence[float | None] | None = None,
) -> list[RewardOutput | str]:
    """Scores one video ``(1, T, 3, H, W)`` with every reward, sharing one cache (features, matches), each
    within its timeout (seconds, ``None``: no limit).

    Returns:
        Per reward, its output or, where it broke the contract and ``contain``, what it did (else that raises).
    """
    cache: dict = {}
    outputs: list[RewardOutput | str] = []
    for reward, timeout in zip(rewards, timeouts or [None] * len(rewards)):
        try:
            with time_limit(timeout):
                output = reward(video, cameras, [prompt], images=image, caches=[cache])
            problem = output_problem(output)
        except RewardTimeout as error:
            problem = str(error)
        except EstimationError as error:  # escaped a plugin's own __call__: the video cannot be scored
            logger.debug("%s could not score a video (%s); using floor %.3g", reward.name, error, reward.floor)
            output, problem = RewardOutput(torch.tensor([float(reward.floor)]), torch.tensor([True])), None
        except Exception as error:
            if not contain:
                raise
            problem = f"raised {type(error).__name__}: {error}"
        if problem is not None and not contain:
            raise RewardError(f"reward {reward.name!r} {problem}")
        outputs.append(problem if problem is not None else output)
    return outputs


_WORKER_REWARDS: Sequence[Reward] = ()


def _init_worker(rewards: Sequence[Reward]) -> None:
    global _WORKER_REWARDS
    die_with_parent()  # a killed trainer takes its workers with it
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass
    _WORKER_REWARDS = rewards


def _score_in_worker(
    video: Tensor, cameras: Cameras, prompt: str, image: Tensor | None, contain: bool, timeouts: list[float | None]
) -> list[RewardOutput | str]:
    return _score_one(_WORKER_REWARDS, video, cameras, prompt, image, contain, timeouts)


class RewardSet:
    """A weighted set of rewards scored together, optionally across CPU worker processes.

    Each video is scored by every reward in one place, so the two-view geometry (features, matches) is
    computed once per video and shared. With ``num_workers > 0`` videos are spread over a persistent pool
    of spawned worker processes (one thread each), which scales batch throughput with CPU cores.

    A reward's fault on a video (see the module's notes) is contained: the video gets that reward's floor,
    ``failed`` and ``errors``; a worker process that dies takes its videos' scores with it (every reward's
    floor and error) and the pool is started afresh at the next call. A warning names each reward the
    first time it faults, and the first time it returns NaN (not applicable) for every video of a batch,
    which leaves it out of their totals. A reward that takes longer than its timeout on a video is such a
    fault (:func:`time_limit`); without one, a reward that hangs stalls the set.

    Args:
        rewards: reward instances.
        weights: one weight per reward (default 1 each).
        num_workers: worker processes; 0 scores in this process.
        errors: ``"contain"`` (the default) or ``"raise"``: a fault raises (the reward's own exception, or a
            :class:`RewardError`), to debug a plugin.
        timeouts: seconds each reward may take on one video, one per reward (``None`` or 0: no limit); default
            none.
    """

    _pool: ProcessPoolExecutor | None = None

    def __init__(
        self,
        rewards: Sequence[Reward],
        weights: Sequence[float] | None = None,
        num_workers: int = 0,
        errors: str = "contain",
        timeouts: Sequence[float | None] | None = None,
    ):
        if not rewards:
            raise ValueError("a RewardSet needs at least one reward")
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        weights = [1.0] * len(rewards) if weights is None else list(weights)
        if len(weights) != len(rewards):
            raise ValueError(f"got {len(weights)} reward_weights for {len(rewards)} rewards")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if errors not in REWARD_ERRORS:
            raise ValueError(f"reward errors must be one of {REWARD_ERRORS}, got {errors!r}")
        timeouts = [None] * len(rewards) if timeouts is None else [t or None for t in timeouts]
        if len(timeouts) != len(rewards) or any(t is not None and not 0 < t < math.inf for t in timeouts):
            raise ValueError(
                f"reward timeouts must be one per reward ({len(rewards)}), each > 0 seconds or 0 for none, "
                f"got {list(timeouts)}"
            )
        self.timeouts = timeouts
        self.rewards = list(rewards)
        self.weights = weights
        self.num_workers = num_workers
        self.contain = errors == "contain"
        self._warned: set[tuple[str, str]] = set()

    @classmethod
    def from_names(
        cls,
        names: Sequence[str],
        weights: Sequence[float] | None = None,
        reward_kwargs: dict[str, dict] | None = None,
        num_workers: int = 0,
        errors: str = "contain",
        timeouts: Sequence[float | None] | None = None,
    ) -> RewardSet:
        """Builds a set from registry names or dotted paths; ``reward_kwargs`` maps a name to its options."""
        reward_kwargs = reward_kwargs or {}
        unknown = set(reward_kwargs) - set(names)
        if unknown:
            raise ValueError(f"reward_kwargs given for rewards not in the set: {sorted(unknown)}")
        rewards = [load_reward(n, **reward_kwargs.get(n, {})) for n in names]
        return cls(rewards, weights, num_workers, errors, timeouts)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.rewards,),
            )
        return self._pool

    def __call__(
        self, videos: Tensor, cameras: Cameras, prompts: Sequence[str], *, images: Tensor | None = None
    ) -> RewardSetOutput:
        validate_inputs(videos, cameras, prompts, images)
        videos, cameras = videos.detach().cpu(), cameras.to("cpu")
        images = None if images is None else images.detach().cpu()
        args = [
            (videos[b : b + 1], cameras[b], prompts[b], None if images is None else images[b : b + 1])
            for b in range(len(videos))
        ]
        if self.num_workers:
            per_video = self._score_in_workers(args)
        else:
            per_video = [_score_one(self.rewards, *a, self.contain, self.timeouts) for a in args]
        rewards, failed, diagnostics, errors = {}, {}, {}, {}
        for k, reward in enumerate(self.rewards):
            outputs = [video_outputs[k] for video_outputs in per_video]
            problems = [o for o in outputs if isinstance(o, str)]
            if problems:
                self._warn_once(
                    reward.name,
                    "error",
                    f"reward {reward.name!r} {problems[0]} (on {len(problems)} of {len(outputs)} videos): they are "
                    f"scored at its floor {reward.floor:g} and counted in errors/{reward.name}; later errors are "
                    "counted, not logged (reward_errors 'raise' raises them)",
                )
            floor = RewardOutput(torch.tensor([float(reward.floor)]), torch.tensor([True]))
            errors[reward.name] = torch.tensor([isinstance(o, str) for o in outputs])
            outputs = [floor if isinstance(o, str) else o for o in outputs]
            rewards[reward.name] = torch.cat([o.rewards.float() for o in outputs])
            failed[reward.name] = torch.cat([o.failed.bool() for o in outputs]) | errors[reward.name]
            for key in sorted({key for o in outputs for key in o.diagnostics}):
                nan = torch.full((1,), math.nan)
                diagnostics[f"{reward.name}/{key}"] = torch.cat([o.diagnostics.get(key, nan).float() for o in outputs])
            if rewards[reward.name].isnan().all():
                self._warn_once(
                    reward.name,
                    "nan",
                    f"reward {reward.name!r} returned NaN (not applicable) for every video of a batch of "
                    f"{len(outputs)}: it is left out of their total",
                )
        weighted = torch.stack([w * rewards[r.name] for r, w in zip(self.rewards, self.weights)])
        return RewardSetOutput(torch.nansum(weighted, dim=0), rewards, failed, diagnostics, errors)

    def _score_in_workers(self, args: list[tuple]) -> list[list[RewardOutput | str]]:
        """:func:`_score_one` of each video in the pool; a video whose worker failed gets every reward's fault."""
        futures = [self._executor().submit(_score_in_worker, *a, self.contain, self.timeouts) for a in args]
        per_video, broken = [], False
        for future in futures:
            try:
                per_video.append(future.result())
            except Exception as error:
                if not self.contain:
                    raise
                broken = broken or isinstance(error, BrokenProcessPool)
                problem = f"could not be scored: its worker process failed ({type(error).__name__}: {error})"
                per_video.append([problem] * len(self.rewards))
        if broken:  # a worker died (killed, out of memory, crashed): the next call starts a new pool
            self.close()
        return per_video

    def _warn_once(self, name: str, kind: str, message: str) -> None:
        if (name, kind) not in self._warned:
            self._warned.add((name, kind))
            logger.warning(message)

    def close(self) -> None:
        """Shuts the worker pool down (also done when the set is garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
