"""MTCNN's refinement stage (RNet), a face/non-face classifier with box regression, with the real
pretrained weights that the PyPI package facenet-pytorch ships (facenet_pytorch/data/rnet.pt, a
state dict). The architecture is written out here in plain torch (the package's own import needs
torchvision, which does not import beside this torch); the weights load with weights_only=True.

    build() -> eval-mode nn.Module: x float32 [N, 3, 24, 24] -> (boxes float32 [N, 4], probs float32 [N, 2])
        x      an RGB crop resized to 24x24, normalised as MTCNN does: (pixel - 127.5) * 0.0078125
        boxes  box regression: offsets of the crop's (x1, y1, x2, y2), in units of the crop size
        probs  softmax over (non-face, face)

Real inputs, offline:
    lfw_subset()  -> (x [200, 3, 24, 24], y [200]): scikit-image's LFW subset, 100 faces (y=1)
                     then 100 non-faces cut from the same photos' backgrounds (y=0); grey, 25x25 -> 24x24
    photo_crops() -> x [N, 3, 24, 24]: colour crops of natural photos (Debian's mate-backgrounds,
                     /usr/share/backgrounds/mate), squares of 24-240 px resized as MTCNN does; no faces
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 24
BACKGROUNDS = Path("/usr/share/backgrounds/mate")


def _file_in(dist_name: str, relpath: str) -> Path:
    """A data file inside an installed distribution, found without importing the package."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        raise ImportError(f"{dist_name} is not installed: run scripts/setup-models.sh") from exc
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise ImportError(f"{dist_name} {dist.version} has no {relpath}")
    return path


class RNet(nn.Module):
    """facenet-pytorch's RNet, layer for layer (same parameter names, so its state dict loads as is)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # the weights were converted from a (W, H)-ordered original
        x = self.prelu4(self.dense4(x.reshape(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class SmallRNet(nn.Module):
    """An RNet-shaped student with a fifth of RNet's parameters (18 k), random weights: the same two outputs
    (boxes [N, 4], probs [N, 2]) for distillation tests."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 12, 3), nn.PReLU(12), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      nn.Conv2d(12, 24, 3), nn.PReLU(24), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      nn.Conv2d(24, 32, 2), nn.PReLU(32), nn.Flatten())
        self.dense = nn.Sequential(nn.Linear(32 * 3 * 3, 48), nn.PReLU(48))
        self.boxes, self.face = nn.Linear(48, 4), nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dense(self.features(x))
        return self.boxes(h), torch.softmax(self.face(h), dim=1)


def small() -> nn.Module:
    return SmallRNet()


def weights_path() -> Path:
    return _file_in("facenet-pytorch", "facenet_pytorch/data/rnet.pt")


def build() -> nn.Module:
    model = RNet()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


# ------------------------------------------------------------------ real inputs

def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8-range RGB [N, 3, H, W] -> MTCNN's input scale."""
    return ((pixels.astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W(, 3)] 0-255 -> [N, 3, size, size], area interpolation as MTCNN's crops are resized."""
    x = torch.from_numpy(np.asarray(images, np.float32))
    x = x[:, None].repeat(1, 3, 1, 1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return nn.functional.interpolate(x, size=(size, size), mode="area").numpy()


@lru_cache(maxsize=None)
def _lfw() -> np.ndarray:
    return np.load(_file_in("scikit-image", "skimage/data/lfw_subset.npy"))  # (200, 25, 25) float in [0, 1]


def lfw_subset(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """200 labelled crops: 100 faces (y=1) then 100 non-faces (y=0), as normalised float32 [200, 3, size, size]."""
    x = normalise(_resize(_lfw() * 255.0, size))
    y = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    return x, y


def photos() -> list[Path]:
    return sorted(BACKGROUNDS.glob("nature/*.jpg")) + sorted(BACKGROUNDS.glob("abstract/Elephants.jpg"))


def photo_crops(n: int = 256, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """`n` square crops (side 24-240 px, log-uniform) from the photos, resized to size x size, normalised."""
    from PIL import Image

    paths = photos()
    if not paths:
        raise FileNotFoundError(f"no photos under {BACKGROUNDS}: run scripts/setup-models.sh (apt package mate-backgrounds)")
    rng = np.random.default_rng(seed)
    per = [n // len(paths) + (i < n % len(paths)) for i in range(len(paths))]
    out = []
    for path, k in zip(paths, per):
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.draft("RGB", (im.width // 2, im.height // 2))
            for _ in range(k):
                side = int(np.exp(rng.uniform(np.log(24), np.log(240))))
                x0, y0 = int(rng.integers(0, im.width - side)), int(rng.integers(0, im.height - side))
                crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BOX)
                out.append(np.asarray(crop, np.float32).transpose(2, 0, 1))
    return normalise(np.stack(out))


# A real example: the first LFW face.
build.example_inputs = (torch.from_numpy(lfw_subset()[0][:1].copy()),)
build.output_names = ("boxes", "probs")
small.example_inputs = build.example_inputs
