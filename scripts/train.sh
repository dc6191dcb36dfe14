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
exec .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    recipes/grpo.py --config recipes/configs/grpo_embedded.yaml "${overwrite[@]}" "$@"
