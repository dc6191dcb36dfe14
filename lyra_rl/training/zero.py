"""DeepSpeed ZeRO-1/2 for the trained weights, when accelerate launches with DeepSpeed
(``recipes/configs/accelerate_deepspeed_zero2.yaml`` or ``--use_deepspeed --zero_stage 2``).

Under a DeepSpeed launch the trained weights (LoRA, trained camera modules) are handed to a DeepSpeed engine,
which partitions their gradients (stage 2) and AdamW state (stages 1 and 2) over the processes, reduces the
gradients, clips them at the trainer's ``max_grad_norm`` and steps; the frozen base model stays whole on
every process (to shard it too, launch with FSDP: ``accelerate_fsdp.yaml``). The trainer's micro-batches
and trained timesteps are the gradient accumulation, with DeepSpeed's unmanaged accumulation: every
``backward`` accumulates, every engine ``step`` is a boundary.

The policy keeps its own precision (frozen weights in bf16, trained ones in float32, forward passes under
autocast), so DeepSpeed's bf16 and fp16 modes, which would cast the trained weights too, are switched off.
Checkpoints keep the trainer's format: the AdamW state is gathered whole and per parameter, as torch's
``AdamW.state_dict()`` holds it, so a run resumes under any launch and number of processes.
"""

from __future__ import annotations

import copy
import math
from importlib.metadata import version

import torch
from accelerate import Accelerator
from torch import nn

from .distributed import DataParallel, StepSettings


def zero_engine(
    accelerator: Accelerator,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    samples_per_process: int,
):
    """A DeepSpeed engine over the trained weights ``params`` (whole on every process) and ``optimizer`` (a
    torch optimizer over them, which keeps the learning rate its scheduler sets), from accelerate's
    DeepSpeed settings; the trainer sets clipping, accumulation and batch size. Raises ``ValueError`` for
    settings it does not implement. accelerate's copy of the settings is left as the launch gave it."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    launched = copy.deepcopy(config)
    zero = config.get("zero_optimization", {})
    if zero.get("stage") not in (1, 2):
        raise ValueError(
            f"DeepSpeed ZeRO stage {zero.get('stage')} is not supported: use stage 1 or 2 (the trained "
            "weights' optimizer state and gradients); to shard the frozen weights, launch with FSDP "
            "(recipes/configs/accelerate_fsdp.yaml)"
        )
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        raise ValueError("DeepSpeed optimizer offload is not supported: the trained weights are LoRA-sized")
    if str(config.get("fp16", {}).get("enabled", False)).lower() == "true":
        raise ValueError("fp16 is not supported (no loss scaling): use mixed_precision bf16 or no")
    if zero.get("reduce_bucket_size", "auto") == "auto":
        # DeepSpeed's default, 5e8 elements, would make each gradient bucket (two with overlap_comm) 2 GB in float32
        zero["reduce_bucket_size"] = sum(p.numel() for p in params)
    config.update(
        {
            "gradient_clipping": max_grad_norm,
            "train_micro_batch_size_per_gpu": samples_per_process,
            "gradient_accumulation_steps": 1,
            "train_batch_size": samples_per_process * accelerator.num_processes,
            "managed_gradient_accumulation": False,
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},  # the policy's own precision (module notes)
        }
    )
    try:
        engine, _ = accelerator.prepare(nn.ParameterList(params), optimizer)
    finally:  # accelerate reads the launch's mixed precision from there (``accelerator.mixed_precision``)
        config.clear()
        config.update(launched)
    if engine.managed_gradient_accumulation():
        raise RuntimeError(
            f"deepspeed {version('deepspeed')} manages gradient accumulation itself: lyra-rl needs a "
            "version with managed_gradient_accumulation (pip install -e '.[deepspeed]')"
        )
    return engine


def _flat_partition(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The one flat fp32 partition this process steps (ZeRO puts each parameter group's into ``params``)."""
    (group,) = optimizer.param_groups
    (flat,) = group["params"]
    return flat


def full_optimizer_state(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> dict:
    """The state of ``optimizer`` (the torch optimizer handed to :func:`zero_engine`) over ``params``, whole
    and on the CPU, as its ``state_dict()`` holds it without ZeRO: per-element tensors (AdamW's moments)
    gathered per parameter, scalars (its step) shared (a collective: every process must call it)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    (group,) = optimizer.param_groups
    flat_state = optimizer.state.get(_flat_partition(optimizer), {})
    state = (
        {
            index: {
                key: value.clone().cpu() if value.dim() == 0 else safe_get_full_optimizer_state(param, key).cpu()
                for key, value in flat_state.items()
            }
            for index, param in enumerate(params)
        }
        if flat_state
        else {}
    )
    hyperparameters = {key: value for key, value in group.items() if key != "params"}
    return {"state": state, "param_groups": [{**hyperparameters, "params": list(range(len(params)))}]}


def load_full_optimizer_state(
    engine, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], state: dict
) -> None:
    """Loads what :func:`full_optimizer_state` (or a torch optimizer's ``state_dict()`` over ``params`` in one
    parameter group) returned into ``optimizer``, each process taking its partition (a collective)."""
    from deepspeed.utils import safe_set_full_optimizer_state

    (saved_group,) = state["param_groups"]
    (group,) = optimizer.param_groups
    group.update({key: value for key, value in saved_group.items() if key != "params"})
    if not state["state"]:
        return
    flat = _flat_partition(optimizer)
    per_param = [state["state"][index] for index in range(len(params))]
    if flat not in optimizer.state:  # not stepped yet: create the state ZeRO's first step would, and link it
        optimizer.state[flat] = {key: torch.zeros_like(flat) for key, value in per_param[0].items() if value.dim()}
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    optimizer.state[flat].update({key: value.clone() for key, value in per_param[0].items() if not value.dim()})
    for param, values in zip(params, per_param):
        for key, value in values.items():
            if value.dim():
                safe_set_full_optimizer_state(param, value.to(flat.device), key)


class ZeRO(DataParallel):
    """DeepSpeed ZeRO stage 1 or 2 over the trained weights (see the module's notes); arguments as
    :class:`DataParallel`'s."""

    def __init__(self, accelerator: Accelerator, policy: nn.Module, settings: StepSettings):
        super().__init__(accelerator, policy, settings)
        self.engine = zero_engine(
            accelerator, self.params, self.optimizer, settings.max_grad_norm, settings.samples_per_process
        )

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already scaled for accumulation

    def step(self, skip: bool = False) -> torch.Tensor:
        """The engine's step: DeepSpeed itself skips a step whose gradient norm is not finite (the overflow check
        of its float32 mode), clears the gradients and reports the norm as ``inf``. ``skip`` makes the gradients
        NaN first (a backward pass of NaN times the trained weights), so that the same check skips the step."""
        if skip:
            poison = torch.stack([param.sum() for param in self.params]).sum() * math.nan
            self.engine.backward(poison, scale_wrt_gas=False)
        self.engine.step()
        return torch.as_tensor(self.engine.get_global_grad_norm())

    def after_weights_loaded(self) -> None:
        self.engine.optimizer.refresh_fp32_params()  # ZeRO steps its own float32 copy of its partition

    def optimizer_state_dict(self) -> dict:
        return full_optimizer_state(self.optimizer, self.params)

    def load_optimizer_state_dict(self, state: dict) -> None:
        load_full_optimizer_state(self.engine, self.optimizer, self.params, state)
