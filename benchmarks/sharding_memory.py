"""Per-process memory and time of a GRPO step on 2 processes, side by side: the DiT replicated (DDP), its blocks
sharded (``accelerate_fsdp.yaml``: FSDP2 FULL_SHARD; ``accelerate_fsdp_grad_op.yaml``: SHARD_GRAD_OP), or the
trained weights' optimizer state and gradients partitioned (``accelerate_deepspeed_zero2.yaml``: DeepSpeed ZeRO-2).

Model: Wan2.1-1.3B's block shapes (dim 1536, FFN 8960, text dim 4096) with fewer blocks and a small VAE, random
weights, LoRA r8 and camera modules trained, on the CPU in float32 (a 2-process gloo group); as at full size,
the weights outweigh a step's activations. Per process:

- held: the tensors kept between steps (its weights, only its shards of the blocks when sharded, and the
  optimizer state; under ZeRO its partition of the AdamW state and the float32 copy of the trained weights
  it steps);
- step peak: what a step adds on top (gathered blocks, activations, gradients): the rise of the resident
  memory over the step, sampled every 2 ms. (Not the profiler's allocation events, as ``grpo_step.py`` uses:
  they miss FSDP2's frees of the gathered weights, which resize their storage to 0; summed, they read
  gigabytes where the resident memory rises by a few hundred megabytes.)
- rollout + update time (median); on CPU gloo the all-gathers are slow, so this time ratio says little
  about NCCL on GPUs.

``<run>_memory_ratio``: (held + step peak) of the run over the DDP run's, the largest over the processes;
``<run>_time_ratio`` likewise.

    python benchmarks/sharding_memory.py --quick    # ~3 minutes on 2 cores; last line: fsdp_memory_ratio=X ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "ddp": None,
    "fsdp": "accelerate_fsdp.yaml",
    "fsdp_grad_op": "accelerate_fsdp_grad_op.yaml",
    "deepspeed_zero2": "accelerate_deepspeed_zero2.yaml",
}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def resident_step_peak(trainer) -> int:
    """How far the resident memory rises above its level before one ``train_step`` (sampled every 2 ms)."""
    before = peak = resident_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        trainer.train_step()
    finally:
        done.set()
        sampler.join()
    return peak - before


def worker(num_layers: int, repeats: int) -> None:
    """One run under ``accelerate launch``: prints the per-process figures as JSON on rank 0."""
    import torch
    from grpo_step import MeanBrightness
    from torch.distributed.tensor import DTensor

    from lyra_rl.data.conditions import procedural_prompts
    from lyra_rl.reward import RewardSet
    from lyra_rl.training import GRPOConfig, GRPOTrainer, make_accelerator
    from policies import PolicyConfig, build_policy, wan_camera
    from policies.prompts import WAN_TEXT_LENGTH

    name = f"wan2.1-1.3b-{num_layers}-blocks"
    wan_camera.TRANSFORMER_CONFIGS[name] = {**wan_camera.TRANSFORMER_CONFIGS["wan2.1-1.3b"], "num_layers": num_layers}
    wan_camera.VAE_CONFIGS[name] = {
        **wan_camera.VAE_CONFIGS["tiny"],
        "z_dim": 16,
        "latents_mean": [0.0] * 16,
        "latents_std": [1.0] * 16,
    }
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        num_frames=9,
        height=32,
        width=48,
        conditions_per_step=1,
        num_generations=2,
        num_sampling_steps=2,
        train_timestep_fraction=0.5,
        eval_conditions=0,
        save_steps=10**9,
        max_steps=10**9,
    )
    accelerator = make_accelerator("no", cpu=True)
    policy = build_policy(PolicyConfig(policy=name), config.seed, accelerator)
    text_dim = policy.transformer.config.text_dim
    policy.add_prompt_embeddings({p: torch.randn(WAN_TEXT_LENGTH, text_dim) for p in procedural_prompts()})
    trainer = GRPOTrainer(config, policy, RewardSet([MeanBrightness()]), accelerator)
    trainer.train_step()  # warm-up: the optimizer state exists from here on
    seconds = []
    for _ in range(repeats):
        logged = trainer.train_step()
        seconds.append(logged["time/rollout"] + logged["time/update"])
    weights = list(policy.parameters())
    own = {id(p) for p in weights}  # ZeRO steps float32 copies of its partition: count them too
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"] if id(p) not in own]
    optimizer_state = [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    held = sum(
        (t.to_local() if isinstance(t, DTensor) else t).nbytes for t in [*weights, *optimized, *optimizer_state]
    )
    peak = resident_step_peak(trainer)
    figures = torch.tensor([held, peak, held + peak, statistics.median(seconds)], dtype=torch.float64)
    largest = accelerator.reduce(figures, "max")  # every figure: the largest over the processes
    if accelerator.is_main_process:
        print(
            json.dumps(
                {
                    "sharded": trainer.backend.joins_every_forward,
                    "held": largest[0].item(),
                    "peak": largest[1].item(),
                    "total": largest[2].item(),
                    "seconds": largest[3].item(),
                }
            )
        )
    accelerator.end_training()


def launch(config_file: str | None, num_layers: int, repeats: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    command += ["--config_file", str(ROOT / "recipes" / "configs" / config_file)] if config_file else ["--multi_gpu"]
    command += [__file__, "--worker", "--num-layers", str(num_layers), "--repeats", str(repeats)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }  # CPU processes: resident memory is what is sampled
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 blocks, 1 timed step (~3 minutes)")
    parser.add_argument("--num-layers", type=int, default=8, help="DiT blocks (Wan2.1-1.3B has 30)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    num_layers, repeats = (4, 1) if args.quick else (args.num_layers, args.repeats)
    if args.worker:
        worker(num_layers, repeats)
        return
    runs = {name: launch(config_file, num_layers, repeats) for name, config_file in CONFIGS.items()}
    print(
        f"GRPO step on 2 CPU processes, Wan2.1-1.3B block shapes x {num_layers} blocks, float32, per process "
        "(largest):"
    )
    for name, run in runs.items():
        print(
            f"  {name:15s} held {run['held'] / 2**20:8.1f} MiB  step peak {run['peak'] / 2**20:8.1f} MiB  "
            f"total {run['total'] / 2**20:8.1f} MiB  rollout+update {run['seconds']:6.2f} s"
        )
    ddp, others = runs["ddp"], [name for name in runs if name != "ddp"]
    print(
        " ".join(
            [
                *(f"{name}_memory_ratio={runs[name]['total'] / ddp['total']:.2f}" for name in others),
                *(f"{name}_time_ratio={runs[name]['seconds'] / ddp['seconds']:.2f}" for name in others),
            ]
        )
    )


if __name__ == "__main__":
    main()
