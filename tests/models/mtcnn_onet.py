"""MTCNN's output stage (ONet), with the real pretrained weights that facenet-pytorch ships
(facenet_pytorch/data/onet.pt): THREE outputs. Plain-torch architecture, as in mtcnn_rnet.py.

    build() -> eval-mode nn.Module: x float32 [N, 3, 48, 48]
               -> (boxes float32 [N, 4], landmarks float32 [N, 10], probs float32 [N, 2])
        x          RGB crop resized to 48x48, normalised as MTCNN does: (pixel - 127.5) * 0.0078125
        boxes      box regression offsets (x1, y1, x2, y2), in units of the crop size
        landmarks  five facial points: x of eyes, nose, mouth corners (5), then their y (5), in [0, 1] of the crop
        probs      softmax over (non-face, face)

Real inputs: mtcnn_rnet.lfw_subset(size=48) (25x25 LFW crops upsampled, so blurry) and
mtcnn_rnet.photo_crops(size=48).
"""

from __future__ import annotations

import torch
from torch import nn

from mtcnn_rnet import _file_in, lfw_subset, photo_crops  # noqa: F401  (re-exported for callers)

SIZE = 48


class ONet(nn.Module):
    """facenet-pytorch's ONet, layer for layer (same parameter names)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.reshape(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def build() -> nn.Module:
    model = ONet()
    path = _file_in("facenet-pytorch", "facenet_pytorch/data/onet.pt")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


build.example_inputs = (torch.from_numpy(lfw_subset(size=SIZE)[0][:1].copy()),)
build.output_names = ("boxes", "landmarks", "probs")
