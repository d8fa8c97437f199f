"""Dataset -> training / validation tensors and the fitted transform, as a run sees them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig
from .data import load_dataset
from .errors import VaelabError
from .pca import fit_pca
from .transforms import Transform, make_transform

SPLIT_SEED = 20140101  # the validation split is the same for every run of a dataset


@dataclass
class PreparedData:
    train: torch.Tensor  # uint8 (N, C, H, W)
    val: torch.Tensor  # uint8 (M, C, H, W), held out of train
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    transform: Transform
    image_shape: tuple[int, ...]
    event_shape: tuple[int, ...]


def load_images(data: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = load_dataset(data.name, split, data_dir=data.data_dir, download=data.download,
                           image_size=data.image_size, channels=data.channels)
    return dataset.images, dataset.labels


def limit_images(images: np.ndarray, labels: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded subset of ``limit`` images (0: all), in their original order.

    Random rather than the first N, since many folders are sorted by class.
    """
    if not limit or limit >= len(images):
        return images, labels
    keep = np.sort(np.random.default_rng(SPLIT_SEED).choice(len(images), size=limit, replace=False))
    return images[keep], labels[keep]


def split_train_val(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of a fixed, seeded hold-out of ``val_fraction`` of n images."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def prepare_data(data: DataConfig, seed: int = 0, transform: Transform | None = None) -> PreparedData:
    """Load the training split, hold out validation, fit the transform (PCA) if needed.

    ``transform`` is passed when resuming, so a fitted PCA is reused, never refitted.
    """
    images, labels = limit_images(*load_images(data, "train"), data.limit)
    train_idx, val_idx = split_train_val(len(images), data.val_fraction)
    if len(train_idx) == 0:
        raise VaelabError(f"no training images left after holding out data.val_fraction={data.val_fraction} "
                          f"of {len(images)}")
    if transform is None:
        if data.transform == "pca":
            transform = fit_pca(images[train_idx], data.pca_components, data.pca_fit_images,
                                data.pca_whiten, seed=seed)
        else:
            transform = make_transform(data.transform)
    images = transform.prepare(images, seed=SPLIT_SEED)
    image_shape = tuple(images.shape[1:])
    return PreparedData(
        train=torch.from_numpy(np.ascontiguousarray(images[train_idx])),
        val=torch.from_numpy(np.ascontiguousarray(images[val_idx])),
        train_labels=torch.from_numpy(labels[train_idx].astype(np.int64)),
        val_labels=torch.from_numpy(labels[val_idx].astype(np.int64)),
        transform=transform, image_shape=image_shape,
        event_shape=transform.event_shape(image_shape))


def eval_images(data: DataConfig, split: str, transform: Transform) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels of a split for evaluation; 'val' is the held-out part of train."""
    if split == "val":
        images, labels = limit_images(*load_images(data, "train"), data.limit)
        _, idx = split_train_val(len(images), data.val_fraction)
        if len(idx) == 0:
            raise VaelabError("this run held out no validation images (data.val_fraction=0): use --split test")
        images, labels = images[idx], labels[idx]
    else:
        images, labels = load_images(data, split)
    images = transform.prepare(images, seed=SPLIT_SEED + 1)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))
