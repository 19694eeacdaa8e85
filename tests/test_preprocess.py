"""edgekit.runtime.preprocess (fast tier): the image preprocessing an artifact carries, as calibration and apps run it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import ArtifactError, UsageError
from edgekit.runtime.preprocess import ImagePreprocess

IMAGENET = {"color": "RGB", "resize": 256, "crop": 224, "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "layout": "NCHW", "_path": "/x/calibration/imagenet.toml"}


def test_a_spec_round_trips_through_the_manifest_form():
    pre = ImagePreprocess.from_dict(IMAGENET, "spec")
    assert pre.crop == (224, 224) and pre.spec == "imagenet" and pre.channels == 3
    assert ImagePreprocess.from_dict(pre.to_dict(), "manifest") == pre


def test_the_steps_in_order():
    """Shorter side to `resize` (aspect kept), centre crop, scale, mean/std per channel, channels first, batch of 1."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    pre = ImagePreprocess.from_dict(IMAGENET, "spec")
    x = pre(a)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    im = Image.fromarray(a).resize((341, 256), Image.BILINEAR)  # 400 * 256 / 300 = 341.3
    left, top = (341 - 224) // 2, (256 - 224) // 2
    ref = np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32) / 255
    ref = (ref - np.array(IMAGENET["mean"], np.float32)) / np.array(IMAGENET["std"], np.float32)
    np.testing.assert_allclose(x[0], ref.transpose(2, 0, 1), atol=1e-6)
    nhwc = ImagePreprocess.from_dict({**IMAGENET, "layout": "NHWC"}, "spec")(a)
    np.testing.assert_array_equal(nhwc[0], x[0].transpose(1, 2, 0))


@pytest.mark.parametrize("change, message", [
    ({"color": "CMYK"}, "preprocess color"),
    ({"resize": 0}, "preprocess resize"),
    ({"crop": [224]}, "preprocess crop"),
    ({"scale": -1}, "preprocess scale"),
    ({"std": [0.2, 0.0, 0.2]}, "preprocess std"),
    ({"mean": [0.1, 0.2]}, "preprocess mean"),
    ({"mean": ["a"]}, "preprocess mean"),
    ({"layout": "CHW"}, "preprocess layout"),
])
def test_a_bad_field_is_one_line_naming_it(change, message):
    with pytest.raises(ArtifactError) as e:
        ImagePreprocess.from_dict({**IMAGENET, **change}, "manifest.json")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_images_of_another_mode_are_refused_not_converted(tmp_path):
    pre = ImagePreprocess.from_dict(IMAGENET, "spec")
    with pytest.raises(UsageError, match="the image is L, the model takes RGB; convert it first"):
        pre(Image.new("L", (300, 300)))
    with pytest.raises(UsageError, match="the image is RGBA, the model takes RGB; drop the alpha channel"):
        pre(Image.new("RGBA", (300, 300)))
    with pytest.raises(UsageError, match="has 4 channel"):
        pre(np.zeros((300, 300, 4), np.uint8))
    with pytest.raises(UsageError, match="cannot read image"):
        pre(tmp_path / "none.jpg")
    with pytest.raises(UsageError, match="cannot preprocess a dict"):
        pre({})
