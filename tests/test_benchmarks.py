import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_grpo_step_benchmark_reports_every_phase_and_its_ratios():
    """The benchmark runs (one timed pair at --quick shapes) and ends with the line the README quotes; the
    ratios are measurements, so only their form is checked here."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grpo_step.py"), "--quick", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"step_overhead=\d+\.\d\d ref_memory_ratio=\d+\.\d\d", lines[-1]), lines[-1]
    phases = [line.split()[0] for line in lines if re.match(r"  \w+ +\d+\.\d+ s", line)]
    assert phases == ["conditions", "rollout", "decode", "reward", "update"]


def test_the_main_job_benchmark_prints_its_table_and_last_line(tmp_path):
    """One step of one rollout pair and one held-out condition: the table and ``rot_err_drop=X sampson_drop=Y``."""
    command = [sys.executable, str(ROOT / "benchmarks" / "main_job.py"), "--quick", "--output-dir", str(tmp_path)]
    command += ["--max_steps", "1", "--conditions_per_step", "1", "--num_generations", "2", "--eval_conditions", "1"]
    command += ["--num_sampling_steps", "2", "--eval_sampling_steps", "2"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"rot_err_drop=-?\d+\.\d{3} sampson_drop=-?\d+\.\d{3}", lines[-1]), lines[-1]
    assert "1 held-out videos: training seeds [0] x sampling seeds [0]" in out.stdout
    assert any(line.startswith("| `rot_err_deg` |") for line in lines)


def test_the_reward_hacking_benchmark_evaluates_both_arms_alike(tmp_path):
    """One step per arm on one rollout pair: both arms' tables carry the hacking statistics, and the last line is
    ``feature_matching_rot_err_drop=X guarded_rot_err_drop=Y``."""
    command = [sys.executable, str(ROOT / "benchmarks" / "reward_hacking.py"), "--output-dir", str(tmp_path)]
    command += ["--max_steps", "1", "--conditions_per_step", "1", "--num_generations", "2", "--eval_conditions", "2"]
    command += ["--num_sampling_steps", "2", "--eval_sampling_steps", "2"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(
        r"feature_matching_rot_err_drop=(-?\d+\.\d{3}|nan) guarded_rot_err_drop=(-?\d+\.\d{3}|nan)", lines[-1]
    )
    assert sum(line.startswith("| `motion_ratio` |") for line in lines) == 2
    assert sum(line.startswith("| `reward/feature_matching` |") for line in lines) == 2


def test_the_algorithms_benchmark_compares_all_three_and_prints_the_speedups():
    """One step of each algorithm on one condition: the table has a row per algorithm (GRPO's speedup is 1 by
    definition) and the last line is ``nft_speedup=X dpo_speedup=Y``."""
    command = [sys.executable, str(ROOT / "benchmarks" / "algorithms.py"), "--quick", "--steps", "1"]
    command += ["--conditions", "1", "--generations", "2", "--sampling-steps", "2", "--eval-conditions", "1"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"nft_speedup=-?(\d+\.\d\d|nan|inf) dpo_speedup=-?(\d+\.\d\d|nan|inf)", lines[-1]), lines[-1]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line.startswith("| ")}
    assert {"grpo", "dpo", "nft"} <= rows.keys()
