"""The distributed backend of a training run: how the trained weights' gradients are reduced, clipped and
stepped, and how their state is gathered whole for a checkpoint, under each kind of launch.

Every trainer keeps its own data-parallel loop (each process samples its share of the conditions; metrics
and advantages are reduced over the gathered batch) and talks to one backend object with the same methods
whatever accelerate launched:

- :class:`DataParallel` (one process, or ``accelerate launch --multi_gpu`` / a DDP config): every process
  holds every weight; the trained weights' gradients are averaged with an all-reduce;
- :class:`~lyra_rl.training.fsdp.FullySharded` (accelerate's FSDP configs): the policy's blocks are sharded
  over the processes with FSDP2;
- :class:`~lyra_rl.training.zero.ZeRO` (accelerate's DeepSpeed configs): the trained weights' gradients and
  optimizer state are partitioned by a DeepSpeed engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from torch import nn


def make_accelerator(mixed_precision: str | None = None, cpu: bool = False) -> Accelerator:
    """The launch's ``Accelerator``: a gloo process group on a machine without CUDA, or with ``cpu``.

    On such a machine ``Accelerator(cpu=True)`` silently turns a DeepSpeed launch into DDP, and without it
    accelerate counts one process while DeepSpeed counts them all, so a DeepSpeed launch names the gloo
    backend instead (on the CPU of a CUDA machine it also needs ``CUDA_VISIBLE_DEVICES=``). The same config
    files then run CPU groups, which is how the tests check them. ``mixed_precision=None`` leaves accelerate's
    config in charge.
    """
    if torch.cuda.is_available() and not cpu:
        return Accelerator(mixed_precision=mixed_precision)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return Accelerator(mixed_precision=mixed_precision, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(cpu=True, mixed_precision=mixed_precision)


def to_cpu(state: Any) -> Any:
    """``state`` (nested dicts/lists of tensors, e.g. an optimizer's ``state_dict()``) with every tensor copied
    to the CPU, so that it loads on any machine."""
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(value) for value in state)
    return state.cpu() if torch.is_tensor(state) else state


@dataclass(frozen=True)
class StepSettings:
    """How a backend steps the trained weights.

    Attributes:
        learning_rate, weight_decay: AdamW's (a scheduler then scales the learning rate).
        max_grad_norm: the L2 norm gradients are clipped at before each step.
        samples_per_process: samples of one optimizer step on each process (DeepSpeed's batch size).
    """

    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    samples_per_process: int


class DataParallel:
    """Replicated weights: every process holds the whole policy and steps the same AdamW over the trained
    weights after averaging their gradients over the processes.

    Args:
        accelerator: the launch's accelerator (its process group).
        policy: the placed policy; its parameters with ``requires_grad`` are the trained weights.
        settings: how to step.
    """

    #: Whether every process must join every forward pass (sharded weights are gathered collectively).
    joins_every_forward = False
    #: AdamW's ``foreach`` (``None``: torch's choice).
    foreach: bool | None = None

    def __init__(self, accelerator: Accelerator, policy: nn.Module, settings: StepSettings):
        self.accelerator, self.max_grad_norm = accelerator, settings.max_grad_norm
        self.params = [p for p in policy.parameters() if p.requires_grad]
        # one parameter group under every backend, so that a checkpoint resumes under any launch
        self.optimizer = torch.optim.AdamW(
            self.params, lr=settings.learning_rate, weight_decay=settings.weight_decay, foreach=self.foreach
        )

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulates the gradients of ``loss`` (already scaled for accumulation) into the trained weights."""
        loss.backward()

    def step(self, skip: bool = False) -> torch.Tensor:
        """Averages the accumulated gradients over the processes, clips them at ``max_grad_norm``, steps the
        optimizer and clears them; returns their norm before clipping.

        A non-finite norm (the same on every process: it is taken after the reduction) or ``skip`` (the same on
        every process too: the trainer's, for a non-finite loss on any of them) skips the optimizer step: the
        gradients are cleared and the weights and the optimizer state stay as they were.
        """
        self.reduce_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        if not skip and torch.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Averages the gradients of ``params`` over the processes (a weight without one counts as zeros)."""
        if self.accelerator.num_processes == 1:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad = self.accelerator.reduce(param.grad, "mean")

    def release(self, module: nn.Module) -> None:
        """Frees what a gradient-free pass over ``module`` left gathered (nothing, for replicated weights)."""

    def full_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The whole of a trained weight (a collective under sharding: every process must call it)."""
        return tensor

    def load_tensor(self, param: nn.Parameter, value: torch.Tensor) -> None:
        """Copies the whole tensor ``value`` into ``param`` (its shard, under sharding)."""
        param.copy_(value.to(param.dtype))

    def after_weights_loaded(self) -> None:
        """Called after new trained weights were copied in (DeepSpeed refreshes its own float32 copy)."""

    def optimizer_state_dict(self) -> dict:
        """The optimizer's ``state_dict()``, whole and on the CPU, whatever the launch sharded (a collective)."""
        return to_cpu(self.optimizer.state_dict())

    def load_optimizer_state_dict(self, state: dict) -> None:
        """Loads what :meth:`optimizer_state_dict` returned under any backend and number of processes."""
        self.optimizer.load_state_dict(state)


def distributed_backend(accelerator: Accelerator, policy: nn.Module, settings: StepSettings) -> DataParallel:
    """The backend of this launch (see the module's notes); FSDP shards ``policy`` here, so call it before
    anything else holds the policy's parameters. Raises ``ValueError`` for launch settings it does not
    implement."""
    from .fsdp import FullySharded, fsdp_plugin
    from .zero import ZeRO

    args = accelerator, policy, settings
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return ZeRO(*args)
    plugin = fsdp_plugin(accelerator)
    if plugin is not None:
        return FullySharded(*args, reshard_after_forward=plugin.reshard_after_forward)
    return DataParallel(*args)
