#!/usr/bin/env bash
# The main job on the embedded default: GRPO with LoRA adapters on the embedded world model (policies/embedded/)
# over procedural scenes, then its held-out conditions before and after, one CPU process (installs first if needed). Extra arguments override the config, e.g. --max_steps 40; a rerun
# replaces the last run's outputs unless it resumes them (--resume true).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
overwrite=(--overwrite_output_dir true)
for arg in "$@"; do
    [[ "$arg" == --resume* ]] && overwrite=()
done
# accelerate launch gives its process one thread unless told (or OMP_NUM_THREADS says) otherwise: use every core.
threads="${OMP_NUM_THREADS:-$(nproc)}"
exec .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    --num_cpu_threads_per_process "$threads" \
    recipes/grpo.py --config recipes/configs/grpo_embedded.yaml "${overwrite[@]}" "$@"
