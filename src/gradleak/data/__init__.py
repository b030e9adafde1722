"""Datasets, their file formats, the conversion to model inputs, and client partitions.

Examples
--------
>>> from gradleak.data import load_dataset, hospital_partition
>>> ds = load_dataset("sample-pneumoniamnist")
>>> x, y = ds.tensors([0, 1, 2], size=32)
>>> tuple(x.shape)
(3, 1, 32, 32)
"""

from gradleak.data.dataset import ImageDataset
from gradleak.data.errors import DataFormatError, InvalidDatasetError, InvalidSplitError, PartitionError
from gradleak.data.formats import (
    read_idx,
    read_image_folder,
    read_medmnist_npz,
    read_npz,
    write_idx,
    write_image_folder,
)
from gradleak.data.partition import (
    HOSPITAL_BATCH_SIZES,
    HOSPITAL_SHARED,
    HOSPITAL_SIZES,
    HOSPITAL_TABLE,
    HospitalClient,
    hospital_partition,
    partition_by_sizes,
    partition_dirichlet,
    partition_iid,
)
from gradleak.data.registry import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    ENV_VAR,
    MNIST_MEAN,
    MNIST_STD,
    check_dataset_name,
    find_data_root,
    load_dataset,
)
from gradleak.data.transforms import channel_stats, denormalize, normalize, to_tensor

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "ENV_VAR",
    "HOSPITAL_BATCH_SIZES",
    "HOSPITAL_SHARED",
    "HOSPITAL_SIZES",
    "HOSPITAL_TABLE",
    "MNIST_MEAN",
    "MNIST_STD",
    "DataFormatError",
    "HospitalClient",
    "ImageDataset",
    "InvalidDatasetError",
    "InvalidSplitError",
    "PartitionError",
    "channel_stats",
    "check_dataset_name",
    "denormalize",
    "find_data_root",
    "hospital_partition",
    "load_dataset",
    "normalize",
    "partition_by_sizes",
    "partition_dirichlet",
    "partition_iid",
    "read_idx",
    "read_image_folder",
    "read_medmnist_npz",
    "read_npz",
    "to_tensor",
    "write_idx",
    "write_image_folder",
]
