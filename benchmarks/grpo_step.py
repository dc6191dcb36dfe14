"""One GRPO step split into rollout, decode, reward and update, against the floor for the same shapes.

Floor: the bare forward passes of the policy (``velocity``) of the rollout, plus forward+backward of the trained
timesteps (and the reference forward when beta > 0), each timed next to the step it is the floor of.
``step_overhead`` = (rollout + update) / floor, the median over the timed steps; building the conditions
(rendering, text and image encoding), decoding and rewards are reported apart.
Memory: the peak tensor memory a step adds, with the adapter-disabled reference vs. the same step without
the KL term (``ref_memory_ratio``), and with a deep-copied reference (plus its weights) for contrast; on the CPU
from the profiler's allocation events, on CUDA from ``torch.cuda.max_memory_allocated``. On CUDA the step runs in the
GPU recipe's precision (bf16 frozen weights, float32 LoRA, gradient checkpointing); ``--policy wan2.1-1.3b``
uses Wan2.1-1.3B's shapes at 480x832, 33 frames (random weights; group of 4, 8 steps, no CFG: CFG doubles
the forward passes; ``--camera-layout astra`` adds Astra's two history frames). The GPU recipe
(``grpo_wan2.1-1.3b.yaml``) trains at 240x416 with micro-batches and the VAE offloaded.

    python benchmarks/grpo_step.py --quick      # < 2 minutes; last line: step_overhead=X ref_memory_ratio=Y
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from torch.profiler import ProfilerActivity, profile

from lyra_rl.algorithms.grpo import select_timesteps
from lyra_rl.data.conditions import procedural_conditions, procedural_prompts
from lyra_rl.reward import RewardSet, VideoReward
from lyra_rl.training import GRPOConfig, GRPOTrainer
from policies import PolicyConfig, build_policy
from policies.prompts import WAN_TEXT_LENGTH


class MeanBrightness(VideoReward):
    name = "brightness"
    floor = 0.0

    def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
        return float(video.mean()), {}


def make_trainer(policy_name: str, beta: float, quick: bool, camera_layout: str = "recammaster") -> GRPOTrainer:
    """Random weights; on CUDA in bf16 (LoRA in float32) with gradient checkpointing, as the GPU recipe runs."""
    if policy_name == "wan2.1-1.3b":
        size = dict(num_frames=33, height=480, width=832)
    else:
        size = dict(num_frames=17, height=64, width=96) if quick else dict(num_frames=33, height=128, width=192)
    cuda = torch.cuda.is_available()
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        beta=beta,
        num_sampling_steps=8,
        train_timestep_fraction=0.5,
        conditions_per_step=1,
        num_generations=4,
        save_steps=10**9,
        mixed_precision="bf16" if cuda else "no",
        **size,
    )
    accelerator = Accelerator(cpu=not cuda, mixed_precision=config.mixed_precision)
    policy_config = PolicyConfig(policy=policy_name, camera_layout=camera_layout, gradient_checkpointing=cuda)
    policy = build_policy(policy_config, config.seed, accelerator)
    if policy.text_encoder is None:  # wan2.1-1.3b: stand-in embeddings of Wan's shape for the procedural prompts
        text_dim = policy.transformer.config.text_dim
        policy.add_prompt_embeddings(
            {p: torch.randn(WAN_TEXT_LENGTH, text_dim).to(torch.bfloat16) for p in procedural_prompts()}
        )
    return GRPOTrainer(config, policy, RewardSet([MeanBrightness()]), accelerator)


def floor_seconds(trainer: GRPOTrainer) -> dict[str, float]:
    """Bare policy passes for the same shapes: S forwards (the rollout's floor) and n_train forward+backward
    (+ reference forwards; the update's floor)."""
    config, policy, device = trainer.config, trainer.policy, trainer.accelerator.device
    batch = procedural_conditions(config.seed, [0], config.num_frames, config.height, config.width)
    cond = policy.condition(batch.images, batch.prompts, batch.cameras).repeat(config.num_generations)
    latents = torch.randn(
        config.num_generations, *policy.latent_shape(config.num_frames, config.height, config.width), device=device
    )
    t = torch.full((config.num_generations,), 0.5, device=device)
    num_train = len(select_timesteps(config.num_sampling_steps, config.train_timestep_fraction))
    _sync()
    start = time.perf_counter()
    with torch.no_grad(), trainer.autocast():
        for _ in range(config.num_sampling_steps):
            policy.velocity(latents, t, cond)
    _sync()
    rollout_end = time.perf_counter()
    for _ in range(num_train):
        with trainer.autocast():
            loss = policy.velocity(latents, t, cond).float().square().mean()
        loss.backward()
        if config.beta > 0:
            with torch.no_grad(), trainer.autocast():
                policy.velocity(latents, t, cond)
    _sync()
    end = time.perf_counter()
    policy.zero_grad(set_to_none=True)  # the floor's gradients must not leak into the next step
    return {"rollout": rollout_end - start, "update": end - rollout_end}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def copied_reference(trainer: GRPOTrainer):
    """Swaps the adapter-disabled reference for a deep copy of the base model (the memory contrast)."""
    policy = trainer.policy
    reference = copy.deepcopy(policy.dit)
    reference.transformer.disable_adapters()

    @contextmanager
    def use_copy():
        trained, policy.dit = policy.dit, reference
        try:
            yield
        finally:
            policy.dit = trained

    policy.adapters_disabled = use_copy
    yield reference


def step_peak_bytes(trainer: GRPOTrainer) -> dict[str, int]:
    """Peak tensor memory one GRPO step adds, over the whole step and over its update phase (where the
    reference runs). On CUDA from the allocator's peak statistics (reset when the update starts); on the CPU
    from the running sum of the profiler's allocation and free events (tensor bytes, not resident pages)."""
    if torch.cuda.is_available():
        peaks, update = {}, trainer.update

        def measured_update(*args):
            peaks["before_update"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                return update(*args)
            finally:
                peaks["update"] = torch.cuda.max_memory_allocated() - base
                peaks["after"] = torch.cuda.max_memory_allocated()

        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        trainer.update = measured_update
        try:
            trainer.train_step()
        finally:
            del trainer.update
        return {"step": max(peaks["before_update"], peaks["after"]) - before, "update": peaks["update"]}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step()
    update = next(e.time_range for e in prof.events() if e.name == "lyra_rl/update")
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = step_peak = update_peak = 0
    update_base = None
    for event in events:
        if update_base is None and event.time_range.start >= update.start:
            update_base = current
        current += event.self_cpu_memory_usage
        step_peak = max(step_peak, current)
        if update.start <= event.time_range.start <= update.end:
            update_peak = max(update_peak, current - update_base)
    return {"step": step_peak, "update": update_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats (< 2 minutes)")
    parser.add_argument("--policy", default="tiny", help="policy config (wan2.1-1.3b needs a large GPU)")
    parser.add_argument("--camera-layout", default="recammaster", choices=["recammaster", "astra"])
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 7 with --quick, else 9)")
    args = parser.parse_args()
    repeats = args.repeats or (7 if args.quick else 9)
    trainer = make_trainer(args.policy, beta=0.004, quick=args.quick, camera_layout=args.camera_layout)
    trainer.train_step()  # warm-up
    phases = {k: [] for k in ("conditions", "rollout", "decode", "reward", "update")}
    floors = {"rollout": [], "update": []}
    for _ in range(repeats):  # each step timed next to its floor: the ratios are taken pair by pair
        logged = trainer.train_step()
        for k in phases:
            phases[k].append(logged[f"time/{k}"])
        for k, seconds in floor_seconds(trainer).items():
            floors[k].append(seconds)
    measured = [r + u for r, u in zip(phases["rollout"], phases["update"])]
    overhead = statistics.median(m / (r + u) for m, r, u in zip(measured, floors["rollout"], floors["update"]))
    c = trainer.config
    print(
        f"GRPO step, policy {args.policy}, {c.num_generations} rollouts of {c.num_frames}x{c.height}x{c.width}, "
        f"{c.num_sampling_steps} steps, {len(select_timesteps(c.num_sampling_steps, c.train_timestep_fraction))} "
        f"trained, beta {c.beta}, "
        f"device {trainer.accelerator.device}, median of {repeats}"
    )
    for name, values in phases.items():
        line = f"  {name:10s} {statistics.median(values):7.3f} s"
        if name in floors:
            ratio = statistics.median(v / f for v, f in zip(values, floors[name]))
            line += f"   floor {statistics.median(floors[name]):7.3f} s, measured/floor {ratio:.2f}"
        print(line)

    peaks = {"with_reference": step_peak_bytes(trainer)}
    no_kl = make_trainer(args.policy, beta=0.0, quick=args.quick, camera_layout=args.camera_layout)
    no_kl.train_step()  # warm-up
    peaks["no_kl"] = step_peak_bytes(no_kl)
    del no_kl
    with copied_reference(trainer) as reference:  # the copy's weights count: they are what it costs
        trainer.train_step()  # warm-up
        copy_bytes = sum(t.numel() * t.element_size() for t in reference.state_dict().values())
        peaks["copy"] = {phase: value + copy_bytes for phase, value in step_peak_bytes(trainer).items()}
    for variant, value in peaks.items():
        print(
            f"  peak memory added, {variant:15s} step {value['step'] / 2**20:8.1f} MiB, update phase "
            f"{value['update'] / 2**20:8.1f} MiB"
        )
    ratio = peaks["with_reference"]["step"] / max(peaks["no_kl"]["step"], 1)
    update_ratio = peaks["with_reference"]["update"] / max(peaks["no_kl"]["update"], 1)
    print(
        f"  update phase: adapter-disabled reference / no KL {update_ratio:.2f}, "
        f"deep-copied reference / no KL {peaks['copy']['update'] / max(peaks['no_kl']['update'], 1):.2f}"
    )
    print(f"step_overhead={overhead:.2f} ref_memory_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
