#!/usr/bin/env bash
# Install what the adb tests need (tests/test_adb_double.py): the real Android
# `adb` client/server from Debian. Idempotent and quiet; exits 0 if present.
set -euo pipefail

if command -v adb >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only if apt does not know the package yet.
if ! apt-cache show adb >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends adb >/dev/null 2>&1; then
    # Stale package lists: refresh once and try again.
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends adb >/dev/null
fi
command -v adb >/dev/null
