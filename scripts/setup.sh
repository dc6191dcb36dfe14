#!/usr/bin/env bash
# Creates .venv with the locked dependencies (idempotent: reinstalls only when the lock or pyproject change).
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs the system library libusb-1.0.
if ! ldconfig -p | grep -q 'libusb-1\.0\.so\.0'; then
  echo "Installing libusb-1.0 (needed by open3d)..."
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null; }
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.lyra-rl-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing lyra-rl and its locked dependencies into .venv (first time: a few minutes)..."
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
