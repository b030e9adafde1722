"""Each hospital's X-rays: a fixed slice of a PneumoniaMNIST npz (MedMNIST's format; no gradleak here).

The data file is named by the environment variable ``HOSPITAL_DATA`` (job.py sets it), the site sizes by
``HOSPITAL_SIZES`` (comma-separated, site-1 first).
"""

import os

import numpy as np
import torch
from torchvision.transforms import Compose, Normalize, ToTensor

# MedMNIST's own examples normalise with mean 0.5, std 0.5
transform = Compose([ToTensor(), Normalize(mean=[0.5], std=[0.5])])


def _npz():
    return np.load(os.environ["HOSPITAL_DATA"])


def site_index(site_name: str) -> int:
    """``site-1`` -> 0, ``site-2`` -> 1, ..."""
    return int(site_name.rsplit("-", 1)[1]) - 1


def site_images(site_name: str):
    """The site's training images (N, 1, 28, 28) in [0, 1] and labels (N,)."""
    data = _npz()
    sizes = [int(s) for s in os.environ.get("HOSPITAL_SIZES", "1,16,64").split(",")]
    order = np.random.default_rng(42).permutation(len(data["train_labels"]))
    start = sum(sizes[: site_index(site_name)])
    idx = order[start:start + sizes[site_index(site_name)]]
    images = torch.from_numpy(data["train_images"][idx]).float().div(255).unsqueeze(1)
    return images, torch.from_numpy(data["train_labels"][idx].reshape(-1).astype(np.int64))


def train_dataset(site_name: str) -> torch.utils.data.TensorDataset:
    """The site's training set, normalised as the model expects."""
    images, labels = site_images(site_name)
    return torch.utils.data.TensorDataset(torch.stack([transform(img[0].numpy()) for img in images]), labels)


def prior():
    """What anyone knows about a chest X-ray without a site's update: the mean of 64 public test images."""
    data = _npz()
    return torch.from_numpy(data["test_images"][:64]).float().div(255).mean(0, keepdim=True)
