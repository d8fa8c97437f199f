"""The Dataset type, the registry of known datasets, data folders, loading and checking."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import VaelabError

from . import builtin, cifar, folder, idx, svhn
from . import download as _dl
from .convert import convert_images

FOLDER_PREFIX = "folder:"
FOLDER_DESCRIPTION = (
    "a folder of images in any format Pillow reads; optional class subfolders give labels; "
    "train/ and test/ subfolders give splits; set data.image_size / data.channels to convert"
)


@dataclass
class Dataset:
    """Images and labels of one split, held in memory."""

    images: np.ndarray  # uint8, (N, C, H, W), C-contiguous
    labels: np.ndarray  # int64, (N,); -1 where unknown
    name: str  # e.g. "mnist", "folder:/path"
    split: str  # "train" | "test" | "extra"
    classes: list[str] | None = None  # label names where known

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4):
            raise VaelabError(f"dataset {self.name}: images must be a uint8 array of shape (N, C, H, W)")
        if not (isinstance(labels, np.ndarray) and labels.shape == (len(images),)):
            raise VaelabError(f"dataset {self.name}: labels must be an array of shape ({len(images)},)")
        self.images = np.ascontiguousarray(images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class _Spec:
    """How to find, load, check and download one known dataset."""

    description: str
    splits: tuple[str, ...]
    classes: list[str] | None
    load: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]  # (dataset folder, split)
    missing: Callable[[Path, str], list[str]]  # files absent for a split, by name
    check: Callable[[Path, list[str]], tuple[list[str], list[str]]]  # -> (lines, usable splits)
    after_download: Callable[[Path], None] | None = None


_DIGITS = [str(i) for i in range(10)]
_IDX_SPLITS = ("train", "test")


def _idx_spec(description: str, classes: list[str]) -> _Spec:
    return _Spec(description, _IDX_SPLITS, classes, idx.load_split, idx.missing_files, idx.check_folder)


_REGISTRY: dict[str, _Spec] = {
    "mnist-sample": _Spec(
        "built-in MNIST sample, ships with vaelab and works offline: train 8000 / test 2000, "
        "1x28x28 grayscale digits, 10 classes",
        ("train", "test"), _DIGITS,
        load=lambda _folder, split: builtin.load_sample(split),
        missing=lambda _folder, _split: [],
        check=lambda _folder, _splits: ([], []),
    ),
    "mnist": _idx_spec(
        "MNIST handwritten digits (LeCun, Cortes, Burges): train 60000 / test 10000, "
        "1x28x28 grayscale, 10 classes", _DIGITS),
    "fashion-mnist": _idx_spec(
        "Fashion-MNIST clothing images (Zalando Research): train 60000 / test 10000, "
        "1x28x28 grayscale, 10 classes",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    "kmnist": _idx_spec(
        "Kuzushiji-MNIST cursive Japanese characters (CODH): train 60000 / test 10000, "
        "1x28x28 grayscale, 10 classes",
        ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]),
    "svhn": _Spec(
        "SVHN house-number digits, format 2 (Netzer et al.): train 73257 / test 26032 / "
        "extra 531131, 3x32x32 RGB, 10 classes",
        ("train", "test", "extra"), _DIGITS,
        load=lambda f, split: svhn.read_mat(f / svhn.SPLIT_FILES[split]),
        missing=lambda f, split: [] if (f / svhn.SPLIT_FILES[split]).is_file() else [svhn.SPLIT_FILES[split]],
        check=svhn.check_folder,
    ),
    "cifar10": _Spec(
        "CIFAR-10 small natural images (Krizhevsky): train 50000 / test 10000, 3x32x32 RGB, 10 classes",
        ("train", "test"), cifar.CLASSES,
        load=cifar.load_split, missing=cifar.missing_files, check=cifar.check_folder,
        after_download=cifar.ensure_extracted,
    ),
}


# --- folders ---------------------------------------------------------------------------


def default_data_dir() -> Path:
    """$VAELAB_DATA if set, else the per-user cache (~/.cache/vaelab, or $XDG_CACHE_HOME/vaelab)."""
    env = os.environ.get("VAELAB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache and Path(cache).expanduser().is_absolute():  # the XDG spec says ignore relative paths
        return Path(cache).expanduser() / "vaelab"
    return Path.home() / ".cache" / "vaelab"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder to use: ``data_dir`` (from --data-dir) if given, else default_data_dir()."""
    if data_dir is None or str(data_dir) == "":
        return default_data_dir()
    return Path(data_dir).expanduser()


# --- registry queries ------------------------------------------------------------------


def dataset_names() -> list[str]:
    """Names of the known datasets (``folder:PATH`` is accepted too but not listed)."""
    return list(_REGISTRY)


def describe_datasets() -> list[tuple[str, str]]:
    """(name, one-line description with splits and image shape) for each known dataset."""
    return [(name, spec.description) for name, spec in _REGISTRY.items()]


def _folder_root(name: str) -> Path | None:
    """The path of a ``folder:PATH`` name, or None for other names."""
    if not name.startswith(FOLDER_PREFIX):
        return None
    path = name[len(FOLDER_PREFIX):].strip()
    if not path:
        raise VaelabError("folder: needs a path, e.g. folder:/data/my-images")
    return Path(path).expanduser().resolve()


def _lookup(name: str) -> tuple[str, _Spec]:
    if not isinstance(name, str):
        raise VaelabError(f"dataset name must be a string, got {name!r}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise VaelabError(
            f"unknown dataset {name!r}; choose one of {', '.join(_REGISTRY)}, or folder:PATH for a folder of images"
        )
    return key, _REGISTRY[key]


def splits(name: str) -> list[str]:
    """The splits a dataset offers (for ``folder:PATH``, found by looking at the folder)."""
    root = _folder_root(name)
    if root is not None:
        return folder.folder_splits(root)
    return list(_lookup(name)[1].splits)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_split_name(split) -> str:
    """A split is a plain name (letters, digits, - and _): it becomes part of paths (a folder
    dataset's ``PATH/SPLIT``, a store's ``store-SPLIT``), which must stay inside their folder."""
    if not isinstance(split, str) or not _PLAIN_NAME.fullmatch(split):
        raise VaelabError(f"split must be a plain name such as 'train' or 'test' (letters, digits, - and _), "
                          f"got {split!r}")
    return split


def _check_options(split, image_size, channels) -> None:
    check_split_name(split)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or not 1 <= image_size <= 4096):
        raise VaelabError(f"data.image_size must be a whole number of pixels from 1 to 4096, got {image_size!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise VaelabError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")


def _missing_message(name: str, split: str, missing: list[str], where: Path) -> str:
    return (
        f"{name} {split} split: missing {', '.join(missing)} in {where}; pass --download "
        f"(or run `vaelab data download {name}`), or set --data-dir / VAELAB_DATA to a folder "
        f"that contains {name}/"
    )


# --- loading ---------------------------------------------------------------------------


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False, image_size: int | None = None,
                 channels: int | None = None) -> Dataset:
    """Load one split of a known dataset or of ``folder:PATH`` into memory.

    ``image_size`` (square side) and ``channels`` (1 or 3) convert every image when given.
    With ``download=True`` missing published files are fetched (and verified) first.
    """
    _check_options(split, image_size, channels)
    root = _folder_root(name)
    if root is not None:
        if not root.is_dir():
            raise VaelabError(f"{name}: {root} is not a directory; give folder:PATH with the path of a folder of images")
        images, labels, classes = folder.load_folder(root, split, channels, image_size)
        return Dataset(images, labels, f"{FOLDER_PREFIX}{root}", split, classes)

    key, spec = _lookup(name)
    if split not in spec.splits:
        raise VaelabError(f"{key} has no {split!r} split; choose one of {', '.join(spec.splits)}")
    where = resolve_data_dir(data_dir) / key
    if key != "mnist-sample":  # the sample ships inside the package and ignores data_dir
        if download:
            download_dataset(key, data_dir, progress=True, splits=[split])
        missing = spec.missing(where, split)
        if missing:
            raise VaelabError(_missing_message(key, split, missing, where))
    images, labels = spec.load(where, split)
    images = convert_images(images, channels, image_size)
    return Dataset(images, labels, key, split, list(spec.classes) if spec.classes else None)


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, progress: bool = True,
                     splits: list[str] | None = None) -> Path:
    """Fetch the published files of ``name`` (all splits unless ``splits``) that are not present.

    Files already present are kept (their structure is checked when loaded). Returns the
    dataset folder.
    """
    if _folder_root(name) is not None:
        raise VaelabError(f"{name} is a local folder; there is nothing to download")
    key, spec = _lookup(name)
    if key == "mnist-sample":
        return builtin.builtin_dir()  # ships with vaelab
    for split in splits or spec.splits:
        if split not in spec.splits:
            raise VaelabError(f"{key} has no {split!r} split; choose one of {', '.join(spec.splits)}")
    where = resolve_data_dir(data_dir) / key
    if where.exists() and not where.is_dir():
        raise VaelabError(f"{where} exists but is not a folder; move it away or set --data-dir / VAELAB_DATA elsewhere")
    fetched: set[str] = set()
    for split in splits or spec.splits:
        for filename in spec.missing(where, split):
            # only published files can be fetched (e.g. not a half-extracted cifar batch)
            if filename in _dl.CHECKSUMS.get(key, {}) and filename not in fetched:
                _dl.fetch_file(filename, list(_dl.MIRRORS.get(key, [])), _dl.CHECKSUMS[key][filename], where, progress)
                fetched.add(filename)
    if spec.after_download is not None:
        spec.after_download(where)
    return where


def check_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Human-readable report: each expected file present/missing, verified structure, counts.

    Raises VaelabError when a present file is damaged or no split can be loaded.
    """
    root = _folder_root(name)
    if root is not None:
        lines = [f"{name}: {root}"]
        for split in folder.folder_splits(root):
            files, labels, classes, base = folder.list_images(root, split)
            images = folder.load_images(files)
            c, h, w = images.shape[1:]
            lines.append(
                f"  split {split}: OK, {len(images)} images {c}x{h}x{w} decoded from {base}, "
                + (f"{len(classes)} classes ({', '.join(classes)})" if classes else "no class subfolders (labels -1)")
            )
        return lines

    key, spec = _lookup(name)
    if key == "mnist-sample":
        lines = [f"mnist-sample: built into vaelab ({builtin.builtin_dir()})"]
        for split in spec.splits:
            images, labels = builtin.load_sample(split)
            lines.append(f"  split {split}: OK, {len(images)} images 1x28x28 (IDX structure verified)")
        return lines
    where = resolve_data_dir(data_dir) / key
    lines, usable = spec.check(where, list(spec.splits))
    if not usable:
        missing = sorted({f for s in spec.splits for f in spec.missing(where, s)})
        raise VaelabError(
            f"{key}: no usable split in {where} (missing {', '.join(missing)}); pass --download "
            f"(or run `vaelab data download {key}`), or set --data-dir / VAELAB_DATA to a folder that contains {key}/"
        )
    return [f"{key}: {where}"] + lines
