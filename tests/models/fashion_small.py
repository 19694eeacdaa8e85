"""A small Fashion-MNIST CNN without batch norm (27k parameters, 1/6 of fashion_cnn's): the
distillation student, and a quick network for QAT (no conv+BN folding to simulate)."""

from torch import nn

example_input_shape = (1, 1, 28, 28)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def build():
    return SmallCNN().eval()


build.example_input_shape = example_input_shape
