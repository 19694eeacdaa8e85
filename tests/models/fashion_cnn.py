"""A small CNN for Fashion-MNIST (28x28 grayscale), used by the tests and benchmarks."""

import torch
from torch import nn

example_input_shape = (1, 1, 28, 28)


class FashionCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def train(x, y, epochs=2, seed=0, batch=128):
    torch.manual_seed(seed)
    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def build():
    return FashionCNN().eval()


build.example_input_shape = example_input_shape


def with_outlier_channel(model, scale=300.0, channel=0):
    """The same function with a quantization-hostile pattern: one output channel of features.4
    (conv + BN + ReLU) scaled up by `scale` through its BN affine, and features.8's weights reading
    that channel scaled down to match. Float outputs are unchanged; a per-tensor int8 scale for
    features.4's output now spends its range on one channel and leaves the others a few levels."""
    import copy

    m = copy.deepcopy(model).eval()
    bn, conv = m.features[5], m.features[8]
    with torch.no_grad():
        bn.weight[channel] *= scale
        bn.bias[channel] *= scale
        conv.weight[:, channel] /= scale
    return m
