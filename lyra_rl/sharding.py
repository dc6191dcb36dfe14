"""Sharded training: the policy's big modules split over processes with FSDP2 when accelerate says so.

The GRPO trainer keeps its own data-parallel loop (rollouts per process, advantages over the gathered group,
an all-reduce of the gradients of replicated weights). Launched with accelerate's FSDP settings
(``recipes/configs/accelerate_fsdp.yaml``, ``accelerate_fsdp_grad_op.yaml`` or ``--use_fsdp --fsdp_version 2``), the policy also
shards its transformer blocks with torch's ``fully_shard``: each process stores ``1/N`` of their weights,
gradients and optimizer state, gathers a block's weights for its forward and backward passes and
reduce-scatters its gradients.

- ``fsdp_reshard_after_forward: true``: the gathered weights are freed after each forward pass
  (FSDP FULL_SHARD, DeepSpeed ZeRO-3): the least memory, one more all-gather per backward pass.
- ``false``: they stay gathered from a forward pass to its backward pass (FSDP SHARD_GRAD_OP, the
  memory/communication trade of ZeRO-2), so a forward+backward holds every block whole at its peak. After
  gradient-free passes (rollouts, evaluation) the trainer frees them with :func:`reshard`.

accelerate itself runs FSDP on GPUs only (on CPU it turns the launch into plain DDP), so the settings are
read from accelerate's plugin or, on CPU, from the environment its launcher sets: the same config file
shards a CPU gloo group, which is how the tests check it.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor


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


def adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trained weights. With FSDP2 shards among them it takes its per-tensor loop: its foreach
    kernels, on by default on GPUs, cannot mix DTensors and plain tensors (Astra's processor stays whole) in
    one call; for LoRA-sized tensors the loop costs milliseconds. One parameter group either way, so a
    checkpoint resumes with or without sharding."""
    params = list(params)
    sharded = any(isinstance(p, DTensor) for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=False if sharded else None)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded ``DTensor`` (a collective: every process must call it), else ``tensor``."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state(state: Any) -> Any:
    """``state`` (nested dicts/lists, e.g. an optimizer's ``state_dict()``) with every tensor whole and on the
    CPU (DTensors gathered: every process must call it), so it loads on any machine and number of processes."""
    if isinstance(state, dict):
        return {key: full_state(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(full_state(value) for value in state)
    return full_tensor(state).cpu() if torch.is_tensor(state) else state


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` (a whole tensor every process holds) sharded as ``param`` is; unchanged for a plain ``param``."""
    if not isinstance(param, DTensor):
        return full
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer ``state_dict()`` saved whole (:func:`full_state`), each parameter's tensors of its shape
    sharded as the parameter of ``optimizer`` with the same index is, ready for its ``load_state_dict``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's indices
    per_param = {
        index: {name: shard_like(value, params[index]) if value.shape == params[index].shape else value
                for name, value in values.items()}
        for index, values in state["state"].items()
    }
    return {**state, "state": per_param}


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
