"""The sites' model: a small CNN with BatchNorm for 28x28 grey chest X-rays (no gradleak here)."""

import torch.nn as nn


class Net(nn.Module):
    """Two conv-BatchNorm-ReLU blocks and a linear classifier on the flattened features."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.classifier = nn.Linear(32 * 14 * 14, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
