"""GRPO vs Flow-DPO vs DiffusionNFT on the same model, conditions and reward: held-out reward gained per compute.

Each algorithm fine-tunes LoRA adapters (r16) of the embedded world model (its shipped weights, 9x64x96) from
the same seed, on the same procedural conditions (random camera paths), groups of ``--generations`` rollouts of
``--conditions`` conditions per step, ``--sampling-steps`` rollout steps, the same learning rate, each with its
own loss settings (GRPO: ``beta`` 0.004, clip 1e-3, SDE noise 0.7 on half the steps; DPO: best against worst,
``beta`` 100; NFT: ``nft_beta`` 1). After every step the same held-out conditions are sampled from the same noise
(ODE) and scored; the time of that evaluation is not counted. The reward defaults to the videos' mean brightness,
which every algorithm can move within minutes (it measures the algorithms, not the rewards);
``--rewards pose_consistency epipolar`` runs the 3D set (slower, noisier).

Compute is counted two ways: wall-clock seconds of the training steps, and policy forward passes (every sample
through ``velocity``: rollouts, the update, reference passes). The table gives each algorithm's held-out gain at
the budgets every algorithm reached (interpolated between steps), and its gain per unit of compute over its whole
run; the speedup is that rate divided by GRPO's (1: as much held-out reward per forward pass as GRPO; the
wall-clock ratio beside it; NaN if GRPO gained nothing, and a GRPO that lost reward makes them negative). The
last line gives the forward-pass speedups.

    python benchmarks/algorithms.py --quick   # < 10 minutes on 2 cores; last line: nft_speedup=X dpo_speedup=Y
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from grpo_step import MeanBrightness

from lyra_rl.reward import RewardSet
from lyra_rl.training import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, NFTConfig, NFTTrainer
from policies import PolicyConfig, build_policy

AXES = ("seconds", "passes")
ALGORITHMS = {
    "grpo": (GRPOTrainer, GRPOConfig, dict(beta=0.004, epsilon=1e-3, noise_level=0.7, train_timestep_fraction=0.5)),
    "dpo": (DPOTrainer, DPOConfig, dict(beta=100.0, pair_selection="best_worst")),
    "nft": (NFTTrainer, NFTConfig, dict(nft_beta=1.0)),
}


def run(name: str, args: argparse.Namespace, seed: int) -> dict[str, np.ndarray]:
    """``args.steps`` steps of one algorithm; per step (0: before any) the cumulative training seconds, forward
    passes and the held-out reward."""
    trainer_class, config_class, settings = ALGORITHMS[name]
    config = config_class(
        output_dir=tempfile.mkdtemp(),
        conditions="procedural",
        camera_paths="random",
        num_frames=9,
        height=64,
        width=96,
        shift=3.0,
        conditions_per_step=args.conditions,
        num_generations=args.generations,
        num_sampling_steps=args.sampling_steps,
        learning_rate=args.learning_rate,
        eval_conditions=args.eval_conditions,
        eval_sampling_steps=args.sampling_steps,
        seed=seed,
        max_steps=args.steps,
        **settings,
    )
    policy = build_policy(
        PolicyConfig(policy="embedded", dit_path="embedded", lora_r=16, lora_alpha=16, train_camera_modules=False),
        seed,
    )
    reward_set = (
        RewardSet([MeanBrightness()]) if args.rewards == ["brightness"] else RewardSet.from_names(args.rewards)
    )
    trainer = trainer_class(config, policy, reward_set)
    passes, counting = [0], [True]
    velocity = policy.velocity

    def counted(latents, t, cond):
        passes[0] += len(latents) if counting[0] else 0
        return velocity(latents, t, cond)

    policy.velocity = counted

    def held_out() -> float:
        counting[0] = False
        try:
            return trainer.evaluate()["eval/reward/total"]
        finally:
            counting[0] = True

    seconds, forwards, reward = [0.0], [0], [held_out()]
    for step in range(args.steps):
        start = time.perf_counter()
        trainer.train_step()
        seconds.append(seconds[-1] + time.perf_counter() - start)
        forwards.append(passes[0])
        reward.append(held_out())
        print(
            f"  {name} seed {seed} step {step + 1}: {seconds[-1]:.0f} s, {forwards[-1]} passes, "
            f"held-out {reward[-1]:.4f}"
        )
    reward_set.close()
    return {"seconds": np.array(seconds), "passes": np.array(forwards, float), "reward": np.array(reward)}


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN where GRPO's rate ``b`` is 0 (a speedup over nothing is not a number)."""
    return a / b if b else float("nan")


def gain_at(curve: dict[str, np.ndarray], axis: str, budget: float) -> float:
    """Held-out reward gained (over the start) once ``budget`` of ``axis`` is spent, interpolated between steps."""
    return float(np.interp(budget, curve[axis], curve["reward"]) - curve["reward"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 steps, one seed (< 10 minutes on 2 cores)")
    parser.add_argument("--steps", type=int, help="training steps per algorithm (default 6 quick, else 20)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 quick, else 0 1 2)")
    parser.add_argument("--conditions", type=int, default=2, help="conditions per step")
    parser.add_argument("--generations", type=int, default=4, help="rollouts per condition")
    parser.add_argument("--sampling-steps", type=int, default=6, help="rollout and held-out sampling steps")
    parser.add_argument("--eval-conditions", type=int, default=8, help="held-out conditions")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rewards", nargs="+", default=["brightness"], help="brightness, or reward names")
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.quick else 20)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    curves = {name: [run(name, args, seed) for seed in seeds] for name in ALGORITHMS}
    budgets = {axis: min(c[axis][-1] for runs in curves.values() for c in runs) for axis in AXES}

    def mean(name: str, value) -> float:
        return float(np.mean([value(c) for c in curves[name]]))

    def rate(name: str, axis: str) -> float:  # held-out reward gained per unit of compute, over the whole run
        return mean(name, lambda c: (c["reward"][-1] - c["reward"][0]) / c[axis][-1])

    print(
        f"\n{args.steps} steps, seeds {seeds}, reward {' + '.join(args.rewards)}; budgets every algorithm reached: "
        f"{budgets['seconds']:.0f} s of training, {budgets['passes']:.0f} forward passes\n"
    )
    columns = ["algorithm", "s / step", "passes / step", "held-out before", "after all steps"]
    columns += ["gain at the time budget", "gain at the pass budget", "gain / 1k passes", "speedup (passes)"]
    columns += ["speedup (time)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in curves:
        cells = [name, f"{mean(name, lambda c: c['seconds'][-1]) / args.steps:.1f}"]
        cells += [f"{mean(name, lambda c: c['passes'][-1]) / args.steps:.0f}"]
        cells += [f"{mean(name, lambda c: c['reward'][k]):.4f}" for k in (0, -1)]
        cells += [f"{mean(name, lambda c: gain_at(c, axis, budgets[axis])):+.4f}" for axis in AXES]
        cells += [f"{1000 * rate(name, 'passes'):+.4f}"]
        cells += [f"{ratio(rate(name, axis), rate('grpo', axis)):.2f}" for axis in ("passes", "seconds")]
        print("| " + " | ".join(cells) + " |")
    print(
        f"nft_speedup={ratio(rate('nft', 'passes'), rate('grpo', 'passes')):.2f} "
        f"dpo_speedup={ratio(rate('dpo', 'passes'), rate('grpo', 'passes')):.2f}"
    )


if __name__ == "__main__":
    main()
