import datetime
import os
import socket
import types

import pytest
import torch
import torch.multiprocessing as mp


class HalfShardedModel(torch.nn.Sequential):
    """Two layers of which ``shard`` shards the first, as a policy shards its blocks (Astra's camera processor
    stays replicated, as the second layer does here)."""

    def shard(self, reshard_after_forward: bool) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self[0], reshard_after_forward=reshard_after_forward)


def _clip_and_step_in_a_sharded_group(rank: int, world: int, port: int, result: str) -> None:
    import torch.distributed as dist

    from lyra_rl.training.distributed import StepSettings
    from lyra_rl.training.fsdp import FullySharded, full_tensor

    def mean_over_processes(tensor, reduction):
        dist.all_reduce(tensor)
        return tensor / world

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=2))
    torch.manual_seed(0)
    model = HalfShardedModel(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    accelerator = types.SimpleNamespace(num_processes=world, reduce=mean_over_processes)
    backend = FullySharded(
        accelerator,
        model,
        StepSettings(learning_rate=0.1, weight_decay=0.01, max_grad_norm=0.5, samples_per_process=4),
    )
    assert backend.optimizer.defaults["foreach"] is False  # on GPUs foreach kernels would mix DTensors and tensors
    model(torch.randn(4, 5)).square().sum().backward()
    backend.optimizer.zero_grad = lambda set_to_none=True: None  # keep the clipped gradients to compare them
    norm = backend.step()
    grads = [full_tensor(p.grad) for p in model.parameters()]
    weights = [full_tensor(p.detach()) for p in model.parameters()]
    if rank == 0:
        torch.save((float(norm), grads, weights), result)
    dist.barrier()  # gloo aborts if a process leaves while another still talks to it
    dist.destroy_process_group()
    # gloo's threads can still be winding down when the interpreter tears down C++ statics, which aborts the process
    # ("terminate called without an active exception", SIGABRT) after its work is done: leave without that teardown
    os._exit(0)


def test_clip_and_optimizer_step_over_sharded_and_replicated_weights(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    model(torch.randn(4, 5)).square().sum().backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
    expected = [p.grad.clone() for p in model.parameters()]
    assert expected_norm > 0.5  # the clipping acts
    torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01, foreach=True).step()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "result.pt"
    mp.start_processes(_clip_and_step_in_a_sharded_group, args=(2, port, str(result)), nprocs=2, start_method="spawn")
    norm, grads, weights = torch.load(result)
    assert norm == pytest.approx(float(expected_norm), rel=1e-6)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    for got, want in zip(weights, model.parameters()):
        torch.testing.assert_close(got, want.detach())


def test_fsdp_settings_come_from_the_accelerate_launch(monkeypatch):
    from accelerate.utils import DistributedType

    from lyra_rl.training.fsdp import fsdp_plugin

    def accelerator(num_processes: int, kind=DistributedType.MULTI_CPU):  # on CPU, accelerate keeps no FSDP
        return types.SimpleNamespace(distributed_type=kind, state=types.SimpleNamespace(), num_processes=num_processes)

    assert fsdp_plugin(accelerator(2)) is None  # a plain DDP launch
    assert fsdp_plugin(accelerator(2, DistributedType.DEEPSPEED)) is None  # DeepSpeed partitions instead (zero)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert fsdp_plugin(accelerator(2)).reshard_after_forward is False
    assert fsdp_plugin(accelerator(1)) is None  # nothing to shard over
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(ValueError, match="fsdp_offload_params"):
        fsdp_plugin(accelerator(2))
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "false")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        fsdp_plugin(accelerator(2))
