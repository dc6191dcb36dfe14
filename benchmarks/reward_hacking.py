"""The hackable-reward ablation (issue 11): GRPO on ``feature_matching`` alone against the main job's guarded set,
and what the policy learns to do to each.

Both arms are the main job (``recipes/configs/grpo_embedded.yaml``: LoRA on the embedded world model, the same
conditions, seed and steps); only the training rewards differ. Both are then evaluated alike, before (adapters
disabled) and after, from the same noise, on the same held-out conditions and sampling seeds (the config's), by one
evaluation set (``EVALUATION_REWARDS``, whichever rewards the arm trained on), with the statistics that show a
policy pleasing a reward instead of following its camera: ``motion_ratio`` (frame-to-frame change over the
true render's: a policy that freezes its video drives it to 0), ``sharpness_ratio`` (Laplacian energy over the
true render's: blur or flat texture lowers it), fidelity to the true render and the camera errors.

    python benchmarks/reward_hacking.py --quick     # 10 steps per arm (about 15 minutes on 2 cores)
    python benchmarks/reward_hacking.py             # the main job's 20 steps per arm

The last line is ``feature_matching_rot_err_drop=X guarded_rot_err_drop=Y``: how much lower the held-out
rotation error is after each arm's GRPO (fractions of before, on the videos with a path on both sides).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from lyra_rl.data.conditions import ConditionSource
from lyra_rl.evaluate import comparison_table
from lyra_rl.evaluate_model import evaluate_before_after
from lyra_rl.reward import RewardSet
from lyra_rl.training import GRPOConfig, GRPOTrainer
from policies.training import build_trainer, exit_with_error, parse_configs, train

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "grpo_embedded.yaml"
EVALUATION_REWARDS = ("lyra_camera", "epipolar", "pose_consistency", "feature_matching")
SHOWN = (
    "reward/feature_matching",
    "reward/lyra_camera",
    "reward/epipolar",
    "reward/pose_consistency",
    "rot_err_deg",
    "camera_failed",
    "diagnostics/epipolar/sampson_px",
    "motion_ratio",
    "sharpness_ratio",
    "psnr",
)


def arm_configs(arm: str, output_dir: Path, overrides: list[str]):
    """The configs of one arm: the main job, with ``feature_matching`` alone as its reward for that arm."""
    args = ["--config", str(CONFIG), "--output_dir", str(output_dir / arm), "--overwrite_output_dir", "true"]
    args += ["--rewards", "feature_matching"] if arm == "feature_matching" else []
    return parse_configs(GRPOConfig, args + overrides)


def run_arm(arm: str, output_dir: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Trains one arm and evaluates it before and after with ``EVALUATION_REWARDS`` under the config's
    ``final_evaluation_seeds``; the comparison."""
    policy_config, reward_config, config = arm_configs(arm, output_dir, overrides)
    seeds, config.final_evaluation_seeds = config.final_evaluation_seeds, []  # evaluated below, by the same set
    trainer = build_trainer(GRPOTrainer, policy_config, reward_config, config)
    train(trainer)
    with RewardSet.from_names(list(EVALUATION_REWARDS)) as evaluation_set:
        return evaluate_before_after(
            trainer.policy,
            ConditionSource.from_config(config, videos=True),
            evaluation_set,
            output_dir / arm / "evaluation",
            num_conditions=config.eval_conditions,
            seeds=seeds,
            num_sampling_steps=config.eval_sampling_steps,
            shift=config.shift,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/reward_hacking_benchmark"))
    parser.add_argument("--quick", action="store_true", help="10 GRPO steps per arm")
    args, overrides = parser.parse_known_args()  # the rest overrides both arms' config, e.g. --max_steps 40
    overrides = (["--max_steps", "10"] if args.quick else []) + overrides
    arms = ("feature_matching", "guarded")
    try:  # bad overrides are one line before any run starts
        seeds = [arm_configs(arm, args.output_dir, overrides)[-1].final_evaluation_seeds for arm in arms][0]
    except (ValueError, FileNotFoundError) as error:
        exit_with_error(error)
    start = time.perf_counter()
    comparisons = {arm: run_arm(arm, args.output_dir, overrides) for arm in arms}
    elapsed = time.perf_counter() - start
    print(f"\nHeld-out conditions x sampling seeds {seeds}, before vs after ({elapsed:.0f} s)")
    for arm, comparison in comparisons.items():
        trained_on = "feature_matching alone" if arm == "feature_matching" else "the main job's rewards"
        print(f"\nGRPO on {trained_on}:")
        print(comparison_table({name: comparison[name] for name in SHOWN if name in comparison}))
    drops = {arm: -comparisons[arm].get("rot_err_deg", {"relative": math.nan})["relative"] for arm in arms}
    print(f"feature_matching_rot_err_drop={drops['feature_matching']:.3f} guarded_rot_err_drop={drops['guarded']:.3f}")


if __name__ == "__main__":
    main()
