"""An image model's preprocessing as data: the one implementation both calibration (edgekit.calibration reads image
folders through it) and the on-device runtime (Model.preprocess / classify) use, so an app feeds exactly the
tensors the artifact was calibrated and validated on. numpy, plus Pillow for decoding and resizing (imported only
when an image is read).

The order of operations, for apps in other languages (the manifest's `preprocess` object holds the fields):
  1. decode; the image must already have `color`'s channels (RGB: 3, L: 1); this runtime refuses others
     (calibration folders are converted with Pillow's Image.convert(color));
  2. `resize` (if set): scale so the shorter side is `resize` pixels, keeping the aspect ratio (each side
     round(side * resize / shorter), at least 1), bilinear (Pillow's Image.BILINEAR);
  3. `crop` (if set) [h, w]: the centre crop, left = (W - w) // 2, top = (H - h) // 2;
  4. float32 pixels x `scale`, minus `mean`, divided by `std` (per channel, broadcast);
  5. `layout`: NCHW (channels first) or NHWC, plus a batch axis of 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError, UsageError

COLORS = {"RGB": 3, "L": 1}
FIELDS = ("color", "resize", "crop", "scale", "mean", "std", "layout", "spec")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536


def _numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and 1 <= len(v) <= 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)


@dataclass(frozen=True)
class ImagePreprocess:
    """Image -> float32 tensor. `spec`: the calibration spec's name it came from (informational)."""

    color: str = "RGB"
    resize: int | None = None
    crop: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    spec: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str, error: type[Exception] = ArtifactError) -> "ImagePreprocess":
        """From a calibration spec (calibration/*.toml) or a manifest's `preprocess`; one `error` line naming the
        field on anything else (a manifest is a file users receive)."""
        def bad(key: str, want: str):
            return error(f"{where}: preprocess {key} = {d.get(key)!r} is not valid", f"it must be {want}")

        if not isinstance(d, dict):
            raise error(f"{where}: preprocess must be an object", "re-run edgekit convert")
        color = d.get("color", "RGB")
        if color not in COLORS:
            raise bad("color", f"one of {', '.join(COLORS)}")
        resize = d.get("resize")
        if resize is not None and not _positive_int(resize):
            raise bad("resize", "a whole number of pixels")
        crop = d.get("crop")
        if crop is not None:
            crop = (crop, crop) if _positive_int(crop) else tuple(crop) if isinstance(crop, (list, tuple)) else None
            if crop is None or len(crop) != 2 or not all(_positive_int(c) for c in crop):
                raise bad("crop", "a size in pixels or [height, width]")
        scale = d.get("scale", 1 / 255)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale) or scale <= 0:
            raise bad("scale", "a positive number")
        mean, std = d.get("mean", [0.0]), d.get("std", [1.0])
        if not _numbers(mean):
            raise bad("mean", "a list of 1 to 4 numbers")
        if not _numbers(std) or any(s <= 0 for s in std):
            raise bad("std", "a list of 1 to 4 positive numbers")
        channels = COLORS[color]
        for key, v in (("mean", mean), ("std", std)):
            if len(v) not in (1, channels):
                raise bad(key, f"1 or {channels} numbers for {color}")
        layout = d.get("layout", "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise bad("layout", "NCHW or NHWC")
        spec = d.get("spec", d.get("_path", ""))
        spec = Path(spec).stem if isinstance(spec, str) and spec.endswith(".toml") else spec if isinstance(spec, str) else ""
        return cls(color, resize, crop, float(scale), tuple(float(x) for x in mean), tuple(float(x) for x in std), layout, spec[:128])

    def to_dict(self) -> dict:
        return {"color": self.color, "resize": self.resize, "crop": list(self.crop) if self.crop else None, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std), "layout": self.layout, "spec": self.spec}

    @property
    def channels(self) -> int:
        return COLORS[self.color]

    def array(self, im) -> np.ndarray:
        """A Pillow image already in `color` -> one float32 sample (C,H,W or H,W,C; no batch axis)."""
        from PIL import Image

        if self.resize:  # shorter side to `resize`, keeping the aspect ratio
            w, h = im.size
            s = self.resize / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        if self.crop:
            ch, cw = self.crop
            w, h = im.size
            left, top = (w - cw) // 2, (h - ch) // 2
            im = im.crop((left, top, left + cw, top + ch))
        a = np.asarray(im, np.float32)
        if a.ndim == 2:
            a = a[..., None]
        a = (a * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return (a.transpose(2, 0, 1) if self.layout == "NCHW" else a).astype(np.float32)

    def __call__(self, image) -> np.ndarray:
        """A path, a Pillow image or an HxWxC / HxW uint8 array -> a batch of one float32 tensor. An image whose
        channels are not `color`'s (grayscale to an RGB model, RGBA, CMYK) is refused, not converted behind the
        app's back: say which conversion is meant (Image.convert)."""
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise UsageError("reading images needs Pillow", "pip install pillow") from None
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as im:
                    im.load()
                    return self(im)
            except (OSError, UnidentifiedImageError) as exc:
                raise UsageError(f"cannot read image {image}: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}",
                                 "give a PNG, JPEG or other image file Pillow reads") from None
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise UsageError(f"an image array must be HxWxC or HxW uint8, got {image.dtype} {image.shape}",
                                 "pass the decoded pixels (0..255), before any scaling")
            ch = 1 if image.ndim == 2 else image.shape[2]
            if ch != self.channels:
                raise UsageError(f"the image has {ch} channel(s), the model takes {self.color} ({self.channels})",
                                 "convert it first (e.g. Image.fromarray(a).convert('RGB'))")
            image = Image.fromarray(image[..., 0] if image.ndim == 3 and ch == 1 else image)
        if not hasattr(image, "mode") or not hasattr(image, "size"):
            raise UsageError(f"cannot preprocess a {type(image).__name__}", "pass an image path, a Pillow image or an HxWxC uint8 array")
        if image.mode != self.color:
            hint = "drop the alpha channel" if "A" in image.mode else "convert it"
            raise UsageError(f"the image is {image.mode}, the model takes {self.color}",
                             f"{hint} first: image.convert({self.color!r})")
        return self.array(image)[None]


__all__ = ["ImagePreprocess", "COLORS"]
