#!/usr/bin/env bash
# The main job on the embedded default (installs first if needed). Extra arguments override the config.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python recipes/score_procedural.py --config recipes/configs/score_procedural.yaml "$@"
