import datetime
import os
import socket
import types

import pytest
import torch
import torch.multiprocessing as mp


def _clip_and_step_in_a_sharded_group(rank: int, world: int, port: int, result: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from lyra_rl.sharding import adamw, clip_grad_norm_, full_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=2))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    fully_shard(model[0])  # model[1] stays replicated, as Astra's camera processor does
    model(torch.randn(4, 5)).square().sum().backward()
    for param in model[1].parameters():  # the trainer averages replicated gradients itself
        dist.all_reduce(param.grad)
        param.grad /= world
    norm = clip_grad_norm_(model.parameters(), max_norm=0.5)
    grads = [full_tensor(p.grad) for p in model.parameters()]
    optimizer = adamw(model.parameters(), lr=0.1, weight_decay=0.01)
    assert optimizer.defaults["foreach"] is False  # on GPUs foreach kernels would mix DTensors and tensors
    optimizer.step()
    weights = [full_tensor(p.detach()) for p in model.parameters()]
    if rank == 0:
        torch.save((float(norm), grads, weights), result)
    dist.barrier()  # gloo aborts if a process leaves while another still talks to it
    dist.destroy_process_group()


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

    from lyra_rl.sharding import fsdp_plugin

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
