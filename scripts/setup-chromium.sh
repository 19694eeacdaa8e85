#!/usr/bin/env bash
# Debian's chromium, which renders the report card headless in tests/test_report.py (with a font for the
# plots' text). Idempotent and quiet: does nothing when chromium is already there.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0

SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
