"""What reliability costs: the rolling last-step state and the up-front validation, as ratios of the work they
guard (issue 13's goal: at most 1.02x).

- ``rolling_state_ratio``: a step of the main job (``recipes/configs/grpo_embedded.yaml``: GRPO, LoRA on the
  embedded world model, the 3D rewards) plus writing, reading back and checking its ``last-step-N`` state,
  over the step alone; the median over the timed steps, each timed with its own save.
- ``validation_ratio``: the main job's run with the checks of its inputs (:func:`policies.training.check_inputs`:
  the configs' relations, the output folder, the conditions) over the run without them, for its ``max_steps``
  steps at the measured step time.
- ``evaluate_check_ratio_<T>x<H>x<W>``: ``lyra-rl evaluate`` of a folder of procedural videos, whole, over the
  same without the time its up-front checks took (every video decoded once by ffmpeg, every commanded path
  loaded and checked), at the main job's size and at the GPU recipe's (33 frames of 240x416).

    python benchmarks/checkpointing.py --quick   # about 4 minutes (the full run: 10 steps, 16 videos per size)

The last line is
``rolling_state_ratio=X validation_ratio=Y evaluate_check_ratio_9x64x96=Z evaluate_check_ratio_33x240x416=W``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

from lyra_rl import cli
from lyra_rl.camera import DIRECTIONS
from lyra_rl.data.conditions import procedural_conditions
from lyra_rl.training import GRPOConfig, GRPOTrainer
from lyra_rl.video import write_video
from policies.training import build_trainer, check_inputs, parse_configs

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "grpo_embedded.yaml"


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def training_costs(configs, steps: int) -> tuple[float, float, float]:
    """The median step time of the run ``configs`` describe, the median ratio (step + rolling state) / step,
    and the time of the checks of its inputs."""
    check_seconds = statistics.median(timed(check_inputs, GRPOTrainer, configs[1], configs[2]) for _ in range(3))
    trainer = build_trainer(GRPOTrainer, *configs)
    try:
        trainer.train_step()  # warm-up
        step_seconds, ratios = [], []
        for _ in range(steps):
            step = timed(trainer.train_step)
            save = timed(trainer.save_checkpoint, f"last-step-{trainer.step}")
            step_seconds.append(step)
            ratios.append((step + save) / step)
            print(f"step {trainer.step}: {step:.2f} s, last-step state {save * 1000:.1f} ms")
    finally:
        trainer.reward_set.close()
        trainer.accelerator.end_training()
    return statistics.median(step_seconds), statistics.median(ratios), check_seconds


def evaluate_costs(folder: Path, num_videos: int, num_frames: int, height: int, width: int) -> tuple[float, float]:
    """The time of ``lyra-rl evaluate`` on ``num_videos`` procedural renders, and of its up-front checks in it."""
    folder.mkdir()
    batch = procedural_conditions(0, list(range(num_videos)), num_frames, height, width, videos=True)
    for k, video in enumerate(batch.videos):
        write_video(folder / f"{k}.mp4", video)
        (folder / f"{k}.direction").write_text(DIRECTIONS[k % len(DIRECTIONS)])
    checks = [0.0]

    def counted(function):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                checks[0] += time.perf_counter() - start

        return run

    probe, trajectory = cli.probe_video, cli.commanded_trajectory
    cli.probe_video, cli.commanded_trajectory = counted(probe), counted(trajectory)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its table
            total = timed(cli.main, ["evaluate", str(folder), "--out", str(folder / "evaluation")])
    finally:
        cli.probe_video, cli.commanded_trajectory = probe, trajectory
    return total, checks[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed steps and 4 videos per size (else 10 and 16)")
    args = parser.parse_args()
    steps, num_videos = (3, 4) if args.quick else (10, 16)
    with tempfile.TemporaryDirectory() as tmp:
        configs = parse_configs(GRPOConfig, ["--config", str(CONFIG), "--output_dir", f"{tmp}/run"])
        config = configs[2]
        config.eval_conditions, config.final_evaluation_seeds = 0, None  # the steps only
        step, rolling_state_ratio, check = training_costs(configs, steps)
        validation_ratio = (config.max_steps * step + check) / (config.max_steps * step)
        print(f"main job: step {step:.2f} s (median of {steps}), input checks {check * 1000:.1f} ms per run")
        ratios = {}
        for size in ((config.num_frames, config.height, config.width), (33, 240, 416)):
            name = "x".join(map(str, size))
            total, checks = evaluate_costs(Path(tmp) / name, num_videos, *size)
            print(f"evaluate: {num_videos} videos of {name} in {total:.2f} s, its checks {checks:.2f} s")
            ratios[f"evaluate_check_ratio_{name}"] = total / (total - checks)
    figures = {"rolling_state_ratio": rolling_state_ratio, "validation_ratio": validation_ratio, **ratios}
    print(" ".join(f"{key}={value:.4f}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
