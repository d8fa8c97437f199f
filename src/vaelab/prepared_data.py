"""Dataset -> training / validation tensors and the fitted transform, as a run sees them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig
from .data import load_dataset
from .data.store import MappedImages, open_store
from .errors import VaelabError
from .pca import fit_pca
from .probes import balanced_indices
from .transforms import Transform, make_transform

SPLIT_SEED = 20140101  # the validation split is the same for every run of a dataset


@dataclass
class PreparedData:
    train: torch.Tensor | MappedImages  # uint8 (N, C, H, W); MappedImages with data.store=memmap
    val: torch.Tensor | MappedImages  # uint8 (M, C, H, W), held out of train
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    transform: Transform
    image_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    labelled: torch.Tensor | None = None  # data.labelled: positions in train of the labelled subset
    labelled_rows: np.ndarray | None = None  # the same images as rows of the dataset's training split


def load_images(data: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's uint8 images and labels: in memory, or with data.store=memmap a read-only
    memory map of its prepared store (`vaelab data prepare`)."""
    if data.store == "memmap":
        return open_store(data.name, split, data.data_dir, data.image_size, data.channels)
    dataset = load_dataset(data.name, split, data_dir=data.data_dir, download=data.download,
                           image_size=data.image_size, channels=data.channels)
    return dataset.images, dataset.labels


def limit_rows(n: int, limit: int) -> np.ndarray | None:
    """Sorted rows of a fixed, seeded subset of ``limit`` of n images (None: all of them).

    Random rather than the first N, since many folders are sorted by class.
    """
    if not limit or limit >= n:
        return None
    return np.sort(np.random.default_rng(SPLIT_SEED).choice(n, size=limit, replace=False))


def limit_images(images: np.ndarray, labels: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded subset of ``limit`` images (0: all), in their original order."""
    rows = limit_rows(len(images), limit)
    return (images, labels) if rows is None else (images[rows], labels[rows])


def split_train_val(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of a fixed, seeded hold-out of ``val_fraction`` of n images."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def limit_and_split(data: DataConfig, n: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(rows kept by data.limit or None for all, train and val indices into those rows)."""
    kept = limit_rows(n, data.limit)
    train, val = split_train_val(n if kept is None else len(kept), data.val_fraction)
    return kept, train, val


def train_val_rows(data: DataConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the n-image training split that a run trains on and holds out (after data.limit)."""
    kept, train, val = limit_and_split(data, n)
    return (train, val) if kept is None else (kept[train], kept[val])


def prepare_data(data: DataConfig, seed: int = 0, transform: Transform | None = None) -> PreparedData:
    """Load the training split, hold out validation, fit the transform (PCA) if needed.

    ``transform`` is passed when resuming, so a fitted PCA is reused, never refitted. With
    data.store=memmap nothing is copied: train and val gather their rows from the map.
    """
    images, labels = load_images(data, data.train_split)
    kept, train_idx, val_idx = limit_and_split(data, len(images))
    train_rows, val_rows = (train_idx, val_idx) if kept is None else (kept[train_idx], kept[val_idx])
    if len(train_rows) == 0:
        raise VaelabError(f"no training images left after holding out data.val_fraction={data.val_fraction} "
                          f"of {len(train_rows) + len(val_rows)}")
    if transform is None:
        if data.transform == "pca":  # read a chunk of rows at a time, never copied whole
            transform = fit_pca(MappedImages(images, train_rows), data.pca_components, data.pca_fit_images,
                                data.pca_whiten, seed=seed)
        else:
            transform = make_transform(data.transform, data.dequantize)
    if data.store == "memmap":  # config validation keeps transforms that rewrite the split off this path
        train, val = MappedImages(images, train_rows), MappedImages(images, val_rows)
    else:  # a one-off rewrite (static binarization) draws on the data.limit subset only, so a
        # limited run never pays for the whole split and its draw does not depend on the split's size
        subset = transform.prepare(images if kept is None else images[kept], seed=SPLIT_SEED)
        train, val = torch.from_numpy(subset[train_idx]), torch.from_numpy(subset[val_idx])
    image_shape = tuple(images.shape[1:])
    train_labels = labels[train_rows].astype(np.int64)
    labelled = None
    if data.labelled:  # the same subset for every run with this seed (and data.limit, data.val_fraction)
        if data.labelled > len(train_rows):
            raise VaelabError(f"data.labelled={data.labelled} is more than the {len(train_rows)} training images")
        labelled = balanced_indices(train_labels, data.labelled, seed=seed, what="data.labelled")
    return PreparedData(
        train=train, val=val,
        train_labels=torch.from_numpy(train_labels),
        val_labels=torch.from_numpy(labels[val_rows].astype(np.int64)),
        transform=transform, image_shape=image_shape,
        event_shape=transform.event_shape(image_shape),
        labelled=None if labelled is None else torch.from_numpy(labelled),
        labelled_rows=None if labelled is None else train_rows[labelled])


def eval_images(data: DataConfig, split: str, transform: Transform) -> tuple[torch.Tensor | MappedImages, torch.Tensor]:
    """uint8 images and labels of a split for evaluation; 'val' is the held-out part of the
    training split. With data.store=memmap the images are read batch by batch from the store."""
    images, labels = load_images(data, data.train_split if split == "val" else split)
    rows = None
    if split == "val":
        _, rows = train_val_rows(data, len(images))
        if len(rows) == 0:
            raise VaelabError("this run held out no validation images (data.val_fraction=0): use --split test")
        labels = labels[rows]
    if data.store == "memmap":
        return MappedImages(images, rows), torch.from_numpy(labels.astype(np.int64))
    if rows is not None:
        images = images[rows]
    images = transform.prepare(images, seed=SPLIT_SEED + 1)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))
