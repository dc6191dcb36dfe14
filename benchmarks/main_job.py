"""The main job's result (issue 11): GRPO with LoRA adapters on the embedded world model, scored by the 3D
reward set, then the held-out conditions evaluated before (the adapters disabled) and after training, from the
same noise (``final_evaluation_seeds``: what ``lyra-rl evaluate --before-after`` measures).

Each training seed is one run of ``recipes/configs/grpo_embedded.yaml`` (the README's main job) with that seed,
so its held-out scenes and camera paths (``seed + 1``) are its own, evaluated under the config's sampling seed.
The table pools the videos of every run; its spread (``±``) is the standard deviation of the per-seed deltas,
each (training seed, sampling seed) a seed.

    python benchmarks/main_job.py --quick        # the main job itself: one training seed (about 15 minutes)
    python benchmarks/main_job.py                # training seeds 0, 1, 2
    python benchmarks/main_job.py --reuse        # the same, reading the runs already finished in --output-dir

The last line is ``rot_err_drop=X sampson_drop=Y``: how much lower the held-out rotation error (degrees,
WorldScore's) and the median Sampson error of the matches under the commanded cameras (``epipolar``'s) are
after GRPO, as fractions of before (0.25 = 25% lower).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lyra_rl.evaluate import compare, comparison_table
from lyra_rl.training import GRPOConfig, GRPOTrainer
from policies.training import exit_with_error, parse_configs, run_training

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "grpo_embedded.yaml"
HEADLINE = {"rot_err_drop": "rot_err_deg", "sampson_drop": "diagnostics/epipolar/sampson_px"}


def main_job_configs(seed: int, output_dir: Path, overrides: list[str]):
    """The configs of the main job with training seed ``seed`` into ``output_dir`` (``ValueError`` if bad)."""
    args = ["--config", str(CONFIG), "--seed", str(seed), "--output_dir", str(output_dir)]
    return parse_configs(GRPOConfig, [*args, "--overwrite_output_dir", "true", *overrides])


def run_main_job(seed: int, output_dir: Path, overrides: list[str], reuse: bool = False) -> dict[str, list[dict]]:
    """One run of the main job with training seed ``seed`` into ``output_dir`` (with ``reuse``, a run that finished
    there already, its final evaluation written, is read instead); its evaluation rows by variant (``before``,
    ``after``), each row's ``seed`` made ``(training seed, sampling seed)``."""
    if not (reuse and (output_dir / "evaluation" / "after" / "evaluation.json").is_file()):
        run_training(GRPOTrainer, *main_job_configs(seed, output_dir, overrides))
    else:
        print(f"seed {seed}: reusing the finished run in {output_dir}")
    rows = {}
    for variant in ("before", "after"):
        videos = json.loads((output_dir / "evaluation" / variant / "evaluation.json").read_text())["videos"]
        rows[variant] = [{**row, "seed": f"{seed}/{row['seed']}"} for row in videos]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/main_job_benchmark"))
    parser.add_argument("--quick", action="store_true", help="training seed 0 only: the README's main job")
    parser.add_argument(
        "--reuse", action="store_true", help="read the seeds whose run in --output-dir finished (same config) instead"
    )
    args, overrides = parser.parse_known_args()  # the rest overrides the config, e.g. --max_steps 10
    seeds = args.seeds[:1] if args.quick else args.seeds
    try:  # bad overrides are one line before any run starts
        configs = [main_job_configs(seed, args.output_dir / f"seed-{seed}", overrides)[-1] for seed in seeds]
    except (ValueError, FileNotFoundError) as error:
        exit_with_error(error)
    start = time.perf_counter()
    rows = {"before": [], "after": []}
    for seed in seeds:
        for variant, variant_rows in run_main_job(
            seed, args.output_dir / f"seed-{seed}", overrides, args.reuse
        ).items():
            rows[variant] += variant_rows
    comparison = compare(rows["before"], rows["after"])
    shown = ["rot_err_deg", "trans_err_scaled", "camera_failed", "psnr", "lpips", "reward/total"]
    shown += [name for name in comparison if name.startswith("reward/") and name != "reward/total"]
    shown += list(HEADLINE.values())
    print(
        f"\n{len(rows['after'])} held-out videos: training seeds {seeds} x sampling seeds "
        f"{configs[0].final_evaluation_seeds} ({time.perf_counter() - start:.0f} s)"
    )
    print(comparison_table({name: comparison[name] for name in dict.fromkeys(shown) if name in comparison}))
    print(" ".join(f"{key}={-comparison[name]['relative']:.3f}" for key, name in HEADLINE.items()))


if __name__ == "__main__":
    main()
