"""Sharded training: the policy's big modules split over the processes with FSDP2 when accelerate says so.

Launched with accelerate's FSDP settings (``recipes/configs/accelerate_fsdp.yaml``,
``accelerate_fsdp_grad_op.yaml`` or ``--use_fsdp --fsdp_version 2``), the policy shards its transformer blocks
with torch's ``fully_shard`` (``policy.shard``): each process stores ``1/N`` of their weights, gradients and
optimizer state, gathers a block's weights for its forward and backward passes and reduce-scatters its
gradients. The trained weights outside the blocks (Astra's processor) stay whole and are all-reduced.

- ``fsdp_reshard_after_forward: true``: the gathered weights are freed after each forward pass
  (FSDP FULL_SHARD, DeepSpeed ZeRO-3): the least memory, one more all-gather per backward pass.
- ``false``: they stay gathered from a forward pass to its backward pass (FSDP SHARD_GRAD_OP, the
  memory/communication trade of ZeRO-2), so a forward+backward holds every block whole at its peak. After
  gradient-free passes (rollouts, evaluation) the trainer frees them (:meth:`FullySharded.release`).

accelerate itself runs FSDP on GPUs only (on CPU it turns the launch into plain DDP), so the settings are
read from accelerate's plugin or, on CPU, from the environment its launcher sets: the same config file
shards a CPU gloo group, which is how the tests check it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from .distributed import DataParallel, StepSettings, to_cpu


def fsdp_plugin(accelerator: Accelerator) -> FullyShardedDataParallelPlugin | None:
    """accelerate's FSDP settings of this launch, or ``None`` when the weights are not to be sharded (one
    process, or no FSDP in the launch). Raises ``ValueError`` for settings the trainer does not implement."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        plugin = FullyShardedDataParallelPlugin()  # CPU: accelerate dropped it, its launcher's variables remain
    if plugin is None:
        return None
    if plugin.fsdp_version != 2:
        raise ValueError(f"lyra-rl shards with FSDP2 (fully_shard): set fsdp_version: 2, got {plugin.fsdp_version}")
    if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
        raise ValueError("fsdp_offload_params is not supported: the trainer steps its optimizer on the accelerator")
    return plugin if accelerator.num_processes > 1 else None


def reshard(module: nn.Module) -> None:
    """Frees the gathered weights of the FSDP2-sharded modules in ``module`` (with ``reshard_after_forward=False``
    a gradient-free forward pass leaves them gathered until a backward pass that never comes)."""
    for submodule in module.modules():
        if isinstance(submodule, FSDPModule):
            submodule.reshard()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded ``DTensor`` (a collective: every process must call it), else ``tensor``."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` (a whole tensor every process holds) sharded as ``param`` is; unchanged for a plain ``param``."""
    if not isinstance(param, DTensor):
        return full
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2) for parameters of which some may be FSDP2 shards: the squares of
    the shards are summed over processes (the shards partition each tensor), replicated ones counted once."""
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    squares = torch.stack([g.float().square().sum() for g in sharded]).sum()
    dist.all_reduce(squares)
    replicated = [g.float().square().sum() for g in grads if not isinstance(g, DTensor)]
    total = (squares + sum(replicated)).sqrt() if replicated else squares.sqrt()
    coefficient = min(max_norm / (float(total) + 1e-6), 1.0)
    for grad in grads:
        grad.mul_(coefficient)
    return total


class FullySharded(DataParallel):
    """FSDP2: the policy's blocks sharded over the processes (``policy.shard``), the trained weights among
    them stepped shard by shard; the rest replicated as under :class:`DataParallel`.

    Args:
        reshard_after_forward: accelerate's ``fsdp_reshard_after_forward`` (see the module's notes).
        *args: as :class:`DataParallel`'s.
    """

    joins_every_forward = True
    # AdamW's per-tensor loop: its foreach kernels, on by default on GPUs, cannot mix DTensors and plain tensors
    # (Astra's processor stays whole) in one call; for LoRA-sized tensors the loop costs milliseconds
    foreach = False

    def __init__(
        self, accelerator: Accelerator, policy: nn.Module, settings: StepSettings, reshard_after_forward: bool = True
    ):
        if not hasattr(policy, "shard"):
            raise ValueError(f"{type(policy).__name__} has no shard(): launch without FSDP")
        policy.shard(reshard_after_forward)
        super().__init__(accelerator, policy, settings)

    def step(self, skip: bool = False) -> torch.Tensor:
        self.reduce_gradients([p for p in self.params if not isinstance(p, DTensor)])  # FSDP reduced the shards'
        grad_norm = clip_grad_norm_(self.params, self.max_grad_norm)  # over every shard: the same on each process
        if not skip and torch.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def release(self, module: nn.Module) -> None:
        reshard(module)

    def full_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        return full_tensor(tensor)

    def load_tensor(self, param: nn.Parameter, value: torch.Tensor) -> None:
        param.copy_(shard_like(value.to(param.dtype), param))

    def optimizer_state_dict(self) -> dict:
        state = self.optimizer.state_dict()
        return to_cpu(
            {
                **state,
                "state": {
                    index: {name: full_tensor(value) for name, value in values.items()}
                    for index, values in state["state"].items()
                },
            }
        )

    def load_optimizer_state_dict(self, state: dict) -> None:
        """Each saved tensor of a parameter's shape is sharded as that parameter is (its index in the one group)."""
        per_param = {
            index: {
                name: shard_like(value, self.params[index]) if value.shape == self.params[index].shape else value
                for name, value in values.items()
            }
            for index, values in state["state"].items()
        }
        self.optimizer.load_state_dict({**state, "state": per_param})
