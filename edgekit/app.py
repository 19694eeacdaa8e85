"""`edgekit export-app`: a small self-contained Python app around an artifact, for a board.

The folder holds the artifact (manifest + model), a copy of edgekit's torch-free runtime (the same files the bench
runner pushes, ~40 KB), a `main.py` and a `requirements.txt` for the board (numpy, the interpreter for the artifact's
format, Pillow for images). Run it there with `python3 main.py ...`; nothing else of edgekit is needed.

Kinds:
  classify  images (files or folders) -> top-k labels with probabilities; `--camera N` reads frames from a camera
            through OpenCV when the board has it (cv2 is optional: not in requirements.txt).
  stream    a recurrent model: frames from a .npy (T x features...) fed one per call through Model.stream(), the
            state carried between calls; prints each call's outputs (the argmax with the label for a class output).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekit.errors import UsageError

KINDS = ("classify", "stream")

CLASSIFY_MAIN = '''"""Classify images with {name} (exported by edgekit export-app; the runtime is the copy beside this file).

    python3 main.py IMAGE_OR_FOLDER... [--top-k 3]
    python3 main.py --camera 0            # frames from a camera (needs OpenCV: pip install opencv-python-headless)
"""
import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from edgekit import runtime  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402

IMAGES = {{".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", help="image files or folders of images")
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--camera", type=int, help="read frames from this camera device (OpenCV)")
    ap.add_argument("--frames", type=int, default=0, help="camera: stop after this many frames (0: never)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    try:
        model = runtime.load(HERE / "artifact", num_threads=args.threads)
        if args.camera is not None:
            return camera(model, args)
        files = []
        for given in args.images:
            p = Path(given)
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGES) if p.is_dir() else [p]
        if not files:
            ap.error("give image files or folders, or --camera N")
        for f in files:
            top = model.classify(f, top_k=args.top_k)
            print(f"{{f}}: " + ", ".join(f"{{label}} {{p:.3f}}" for label, p in top), flush=True)
    except EdgekitError as exc:
        print(f"error: {{exc}}", file=sys.stderr)
        return 2
    return 0


def camera(model, args) -> int:
    try:
        import cv2
    except ImportError:
        print("error: --camera needs OpenCV; pip install opencv-python-headless", file=sys.stderr)
        return 2
    cap = cv2.VideoCapture(args.camera)
    if not cap.isOpened():
        print(f"error: cannot open camera {{args.camera}}", file=sys.stderr)
        return 2
    color = model.image_preprocess.color
    n = 0
    try:
        while not args.frames or n < args.frames:
            ok, frame = cap.read()
            if not ok:
                break
            image = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if color == "L" else cv2.COLOR_BGR2RGB)  # OpenCV reads BGR
            label, p = model.classify(image, top_k=1)[0]
            print(f"frame {{n}}: {{label}} {{p:.3f}}", flush=True)
            n += 1
    finally:
        cap.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

STREAM_MAIN = '''"""Stream frames through {name} (exported by edgekit export-app): the recurrent state is fed back between calls.

    python3 main.py FRAMES.npy [FRAMES.npy ...]    # each file: one sequence, frames along the first axis
"""
import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from edgekit import runtime  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sequences", nargs="+", help=".npy files, one sequence each (frames along axis 0)")
    ap.add_argument("--every", type=int, default=0, help="print every Nth step too (0: only the last)")
    args = ap.parse_args()
    try:
        model = runtime.load(HERE / "artifact")
        session = model.stream()
        labels = model.manifest.labels
        cls = next((j for j, o in enumerate(o for o in model.outputs if o.kind != "state") if o.kind == "class"), None)
        for path in args.sequences:
            frames = np.load(path, allow_pickle=False).astype(np.float32)
            session.reset()
            for t in range(len(frames)):
                outs = session(frames[t:t + 1])
                last = t == len(frames) - 1
                if last or (args.every and t % args.every == 0):
                    if cls is not None:
                        k = int(np.argmax(outs[cls]))
                        shown = labels[k] if labels and k < len(labels) else str(k)
                    else:
                        shown = " ".join(f"{{float(v):.4g}}" for v in np.ravel(outs[0])[:8])
                    print(f"{{path}} step {{t}}: {{shown}}", flush=True)
    except (EdgekitError, OSError, ValueError) as exc:
        print(f"error: {{exc}}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def export_app(artifact: str | Path, kind: str, out: str | Path) -> Path:
    """Write the app folder for `artifact` at `out` (staged and swapped in whole; only a folder edgekit wrote is
    replaced). Raises UsageError when the artifact cannot do `kind` (classify: an image classifier with recorded
    preprocessing; stream: a model with a declared state output)."""
    from edgekit.artifact import Staging
    from edgekit.runner import PAYLOAD
    from edgekit.runtime import read_manifest

    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r} is not one of {', '.join(KINDS)}", "use classify or stream")
    src = Path(artifact)
    manifest = read_manifest(src)
    if kind == "classify":
        if not manifest.preprocess:
            raise UsageError(f"{artifact} records no image preprocessing: a classify app would not know how to feed it",
                             "convert with --preprocess SPEC (or calibrate on an image folder with --calib-spec)")
        if not any(o.kind == "class" for o in manifest.outputs):
            raise UsageError(f"{artifact} has no class output to classify with", "convert with --output NAME=class")
    else:
        if not manifest.state_feeds():
            raise UsageError(f"{artifact} has no state output to stream", "convert with --state OUT=IN for a recurrent model")
    stage = Staging(Path(out))
    try:
        shutil.copytree(src, stage.path / "artifact", ignore=shutil.ignore_patterns(".*"))
        pkg = Path(__file__).resolve().parent
        for rel in PAYLOAD:
            dest = stage.path / "edgekit" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pkg / rel, dest)
        name = manifest.model_name or src.name
        (stage.path / "main.py").write_text((CLASSIFY_MAIN if kind == "classify" else STREAM_MAIN).format(name=name))
        reqs = ["numpy>=1.23", "ai-edge-litert>=2.3  # or tflite-runtime on old boards" if manifest.format == "tflite" else "onnxruntime>=1.17"]
        if kind == "classify":
            reqs.append("pillow>=9")
        (stage.path / "requirements.txt").write_text("# what the board needs for this app (pip install -r requirements.txt)\n" + "\n".join(reqs) + "\n")
        return stage.commit()
    except BaseException:
        stage.abort()
        raise


__all__ = ["export_app", "KINDS"]
