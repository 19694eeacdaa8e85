"""A small stateful streaming keyword spotter: a 2-layer GRU over log-mel frames, trained here on
real synthetic speech from espeak-ng (several accents, voice variants, speeds and pitches).

    build()  -> the trained model, eval mode (trained on first use, ~40 s; the state dict is then
                cached under ~/.cache/edgekit-tests, keyed by this recipe and the espeak-ng/torch versions)
    model(frame_features, h) -> (logits, h_new)
        frame_features float32 [1, 40]   one raw log-mel frame (23 ms window, 20 ms hop; the model
                                         normalises it itself)
        h              float32 [2, 1, 64] the GRU state: (layers, batch, hidden). Its leading axis is
                                         the layer, NOT the batch; start from zeros.
        logits         float32 [1, 7]    scores for CLASSES after this frame
        h_new          float32 [2, 1, 64] the state to feed back with the next frame
    sequences() -> held-out utterances (voices, accents and speeds not used in training) as
                   [(frames float32 [55, 40], label int)], read the decision after the last frame
    model.forward_sequence(frames [B, T, 40]) -> logits [B, T, 7]: the whole sequence at once (nn.GRU)

No torchaudio: features are numpy (Hann window, rfft, HTK mel filterbank, log).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

RECIPE = "kws-gru-v3"  # bump when anything below changes what is trained
KEYWORDS = ("yes", "no", "stop", "go", "left", "right")
OTHER_WORDS = ("bed", "bird", "cat", "dog", "down", "happy", "house", "marvin", "off", "on",
               "seven", "sheila", "tree", "up", "wow", "zero", "four", "learn", "follow", "visual")
CLASSES = KEYWORDS + ("_other_",)

SR = 22050  # espeak-ng's own rate
N_FFT, HOP, N_MELS, FMIN, FMAX = 512, 441, 40, 60.0, 8000.0  # 23 ms window, 20 ms hop
T = 55  # frames per sequence (1.1 s): lead-in silence, the word, at least 5 frames of tail
LOSS_FRAMES = 4  # training targets: the last 4 frames (all after the word)
HIDDEN, LAYERS = 64, 2

# Training and held-out speakers differ in accent, voice variant, speed and pitch.
TRAIN_VOICES = dict(accents=("en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"),
                    variants=("m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt", "adam", "linda"),
                    speeds=(120, 150, 180, 210), pitches=(30, 45, 60, 75))
HELD_OUT_VOICES = dict(accents=("en-gb-scotland", "en-gb-x-gbcwmd"),
                       variants=("m5", "m6", "m7", "f4", "f5", "benjamin"),
                       speeds=(135, 165, 195), pitches=(40, 55, 70))


# ------------------------------------------------------------------ speech and features

def espeak_version() -> str:
    try:
        return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError("espeak-ng is not installed: run scripts/setup-models.sh") from exc


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's rendering of `word`, float32 in [-1, 1] at 22050 Hz, leading/trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), word],
                       check=True, capture_output=True)
        with wave.open(str(path)) as w:
            assert w.getframerate() == SR and w.getsampwidth() == 2 and w.getnchannels() == 1
            audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio


@lru_cache(maxsize=None)
def mel_filterbank() -> np.ndarray:
    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = mel2hz(np.linspace(hz2mel(FMIN), hz2mel(FMAX), N_MELS + 2))
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SR)
    fb = np.zeros((N_MELS, len(freqs)), np.float64)
    for i in range(N_MELS):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
    return fb


def log_mel(audio: np.ndarray) -> np.ndarray:
    """[n_frames, 40] float32 log-mel power frames (Hann 512, hop 441; frame i covers samples i*441 ...)."""
    n = 1 + max(0, len(audio) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    frames = np.pad(audio, (0, max(0, N_FFT - len(audio))))[idx] * np.hanning(N_FFT)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(power @ mel_filterbank().T + 1e-6).astype(np.float32)


def place(word: np.ndarray, rng: np.random.Generator, jitter: bool) -> np.ndarray:
    """The word in a T-frame clip over background noise: lead-in of 2-15 frames (8 held out),
    at least 5 frames of tail, random gain and noise level in training."""
    n = (T - 1) * HOP + N_FFT
    word = word[: n - 8 * HOP]  # the slowest words are cut to leave a 5-frame tail
    room = (n - len(word)) // HOP - 6
    lead = int(rng.integers(2, max(3, min(15, room)))) if jitter else min(8, max(0, room))
    gain = float(rng.uniform(0.3, 1.0)) if jitter else 0.6
    noise = float(10 ** rng.uniform(-3.5, -2.0)) if jitter else 10 ** -2.75
    clip = rng.standard_normal(n).astype(np.float32) * noise
    clip[lead * HOP: lead * HOP + len(word)] += gain * word
    return clip


def _voices(pool: dict, rng: np.random.Generator, k: int) -> list[tuple[str, int, int]]:
    out = []
    for _ in range(k):
        voice = f"{rng.choice(pool['accents'])}+{rng.choice(pool['variants'])}"
        out.append((voice, int(rng.choice(pool["speeds"])), int(rng.choice(pool["pitches"]))))
    return out


def _utterances(pool: dict, per_keyword: int, per_other: int, seed: int) -> list[tuple[str, str, int, int, int]]:
    rng = np.random.default_rng(seed)
    jobs = []
    for label, word in enumerate(KEYWORDS):
        jobs += [(word, v, s, p, label) for v, s, p in _voices(pool, rng, per_keyword)]
    for word in OTHER_WORDS:
        jobs += [(word, v, s, p, len(KEYWORDS)) for v, s, p in _voices(pool, rng, per_other)]
    return jobs


def _render(jobs, copies: int, jitter: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        words = list(pool.map(lambda j: speak(*j[:4]), jobs))
    rng = np.random.default_rng(seed)
    x, y = [], []
    for (_, _, _, _, label), audio in zip(jobs, words):
        for _ in range(copies):
            x.append(log_mel(place(audio, rng, jitter))[:T])
            y.append(label)
    return np.stack(x), np.array(y, np.int64)


def train_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training sequences [N, T, 40] and labels: 6 keywords x 48 voices, 20 other words x 5 voices, 2 placements each."""
    return _render(_utterances(TRAIN_VOICES, 48, 5, seed), copies=2, jitter=True, seed=seed + 1)


@lru_cache(maxsize=None)
def _held_out(seed: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    return _render(_utterances(HELD_OUT_VOICES, 12, 2, seed), copies=1, jitter=False, seed=seed + 1)


def sequences() -> list[tuple[np.ndarray, int]]:
    """Held-out utterances (Scottish and West Midlands accents, voice variants, speeds and pitches not
    seen in training): [(frames float32 [55, 40] in time order, label)], 72 keywords + 40 others."""
    x, y = _held_out()
    return [(x[i], int(y[i])) for i in range(len(y))]


# ------------------------------------------------------------------ the model

class KWSGRU(nn.Module):
    def __init__(self, n_mels: int = N_MELS, hidden: int = HIDDEN, layers: int = LAYERS, n_classes: int = len(CLASSES)):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.gru = nn.GRU(n_mels, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def _cell(self, x: torch.Tensor, h: torch.Tensor, layer: int) -> torch.Tensor:
        """One GRU step with nn.GRU's own weights, written out (gate order r, z, n, as in torch)."""
        gi = nn.functional.linear(x, getattr(self.gru, f"weight_ih_l{layer}"), getattr(self.gru, f"bias_ih_l{layer}"))
        gh = nn.functional.linear(h, getattr(self.gru, f"weight_hh_l{layer}"), getattr(self.gru, f"bias_hh_l{layer}"))
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h

    def forward(self, frame_features: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One streaming step: frame_features [B, 40], h [layers, B, hidden] -> (logits [B, C], h_new)."""
        x = (frame_features - self.mean) / self.std
        states = []
        for layer in range(self.gru.num_layers):
            x = self._cell(x, h[layer], layer)
            states.append(x)
        return self.head(x), torch.stack(states, dim=0)

    def forward_sequence(self, frames: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """The whole sequence at once: frames [B, T, 40] -> logits [B, T, C]."""
        out, _ = self.gru((frames - self.mean) / self.std, h)
        return self.head(out)

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(self.gru.num_layers, batch, self.gru.hidden_size)


def closed_loop(model: KWSGRU, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` frame by frame, feeding it its own state: frames [T, 40] -> (logits [T, C], states [T+1, layers, 1, hidden])."""
    frames = torch.as_tensor(frames)
    h = model.initial_state(1)
    logits, states = [], [h]
    with torch.no_grad():
        for t in range(frames.shape[0]):
            out, h = model(frames[t:t + 1], h)
            logits.append(out[0])
            states.append(h)
    return torch.stack(logits), torch.stack(states)


def state_samples(model: KWSGRU, seqs: list[tuple[np.ndarray, int]], every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Realistic (frame, state) input pairs for calibration or validation: every `every`-th step of a
    closed-loop run over each sequence. Returns frames [N, 1, 40] and states [N, layers, 1, hidden]."""
    frames, states = [], []
    for x, _ in seqs:
        _, hs = closed_loop(model, x)
        for t in range(0, x.shape[0], every):
            frames.append(x[t:t + 1])
            states.append(hs[t].numpy())
    return np.stack(frames).astype(np.float32), np.stack(states).astype(np.float32)


def train(seed: int = 0, epochs: int = 30, batch: int = 64, data=None) -> KWSGRU:
    """Deterministic training (CPU, fixed seeds): cross-entropy on the last LOSS_FRAMES frames of each clip."""
    x, y = data if data is not None else train_data(seed)
    torch.manual_seed(seed)
    model = KWSGRU()
    flat = x.reshape(-1, x.shape[-1])
    model.mean.copy_(torch.from_numpy(flat.mean(0)))
    model.std.copy_(torch.from_numpy(flat.std(0) + 1e-3))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small GEMMs: one thread is fastest, and the same sums on every machine
    try:
        _fit(model, opt, sched, xt, yt, gen, epochs, batch)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _fit(model, opt, sched, xt, yt, gen, epochs, batch):
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            logits = model.forward_sequence(xt[idx])[:, -LOSS_FRAMES:]
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yt[idx].repeat_interleave(LOSS_FRAMES))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        sched.step()


def accuracy(model: KWSGRU, seqs: list[tuple[np.ndarray, int]] | None = None) -> float:
    """Held-out accuracy of the decision after the last frame (whole-sequence run)."""
    seqs = sequences() if seqs is None else seqs
    x = torch.from_numpy(np.stack([s for s, _ in seqs]))
    with torch.no_grad():
        pred = model.forward_sequence(x)[:, -1].argmax(-1).numpy()
    return float((pred == np.array([label for _, label in seqs])).mean())


def cache_path() -> Path:
    env = os.environ.get("EDGEKIT_MODEL_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit-tests"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = Path(tempfile.gettempdir()) / "edgekit-tests"
        base.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{RECIPE}|{espeak_version()}|{torch.__version__}".encode()).hexdigest()[:12]
    return base / f"kws_gru-{key}.pt"


def build() -> KWSGRU:
    """The trained model: loaded from the cache, or trained here (~40 s on 2 cores) and cached."""
    path = cache_path()
    model = KWSGRU()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:
            pass  # a broken cache file: train again
    model = train()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


# A real example: a frame from the middle of "yes" (American voice), and the initial (zero) state.
_yes = log_mel(place(speak("yes", "en-us", 160, 50), np.random.default_rng(0), jitter=False))
build.example_inputs = (torch.from_numpy(_yes[12:13].copy()), torch.zeros(LAYERS, 1, HIDDEN))
build.input_names = ("frame_features", "h")


if __name__ == "__main__":  # python tests/models/kws_gru.py: train, report held-out accuracy
    import time

    t0 = time.time()
    data = train_data()
    t1 = time.time()
    m = train(data=data)
    t2 = time.time()
    print(f"data {t1 - t0:.1f}s ({len(data[1])} clips), training {t2 - t1:.1f}s, held-out accuracy {accuracy(m):.3f} "
          f"over {len(sequences())} clips (chance {1 / len(CLASSES):.3f})")
