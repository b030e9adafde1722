"""cifarapp: a Flower / PyTorch app — the model, the data and the training loop (no gradleak here)."""

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import Compose, Normalize, ToTensor


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


pytorch_transforms = Compose([ToTensor(), Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def partition(data_path: str, partition_id: int, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 32, 32, 3) uint8 and labels of one site: consecutive slices of a fixed shuffle."""
    data = np.load(data_path)
    order = np.random.default_rng(42).permutation(len(data["labels"]))
    start = sum(sizes[:partition_id])
    idx = order[start:start + sizes[partition_id]]
    return data["images"][idx], data["labels"][idx].astype(np.int64)


def load_data(data_path: str, partition_id: int, sizes: list[int], batch_size: int) -> DataLoader:
    """A shuffling DataLoader of the site's images, normalised as the model expects."""
    images, labels = partition(data_path, partition_id, sizes)
    x = torch.stack([pytorch_transforms(img) for img in images])
    return DataLoader(TensorDataset(x, torch.from_numpy(labels)), batch_size=batch_size, shuffle=True)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


if __name__ == "__main__":  # python -m cifarapp.task DATA_PATH PARTITION_ID SIZES OUT: one site's images as an npz
    parser = argparse.ArgumentParser(description="Export one site's training images (images, labels) to an npz.")
    parser.add_argument("data_path")
    parser.add_argument("partition_id", type=int)
    parser.add_argument("sizes", help="comma-separated partition sizes, as in pyproject.toml")
    parser.add_argument("out")
    args = parser.parse_args()
    images, labels = partition(args.data_path, args.partition_id, [int(s) for s in args.sizes.split(",")])
    np.savez(args.out, images=images, labels=labels)
