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
