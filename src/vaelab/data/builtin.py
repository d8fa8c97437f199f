"""``mnist-sample``: the MNIST test set shipped inside the package, usable offline."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import VaelabError

from .idx import load_pair

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
TRAIN_COUNT = 8000  # train = the first 8000 images, test = the last 2000
SPLITS = {"train": slice(0, TRAIN_COUNT), "test": slice(TRAIN_COUNT, None)}


def _resource(name: str):
    return resources.files("vaelab").joinpath("builtin").joinpath(name)


def builtin_dir() -> Path:
    """Where the sample files live (a real folder for ordinary installs)."""
    return Path(str(resources.files("vaelab").joinpath("builtin")))


def load_sample(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) and labels of one split of the built-in sample."""
    try:
        images_gz = _resource(IMAGES_FILE).read_bytes()
        labels_gz = _resource(LABELS_FILE).read_bytes()
    except OSError as exc:
        raise VaelabError(
            f"the built-in mnist-sample files are missing from the vaelab installation ({exc}); reinstall vaelab"
        ) from None
    images, labels = load_pair(images_gz, labels_gz, names=(f"builtin/{IMAGES_FILE}", f"builtin/{LABELS_FILE}"))
    part = SPLITS[split]
    return np.ascontiguousarray(images[part]), np.ascontiguousarray(labels[part])
