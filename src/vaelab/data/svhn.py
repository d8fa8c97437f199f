"""SVHN format 2 (cropped 32x32 digits) from the official MATLAB .mat files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import VaelabError

from ._text import reason

SPLIT_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 (digit 0 stored as 10 becomes 0)."""
    import scipy.io  # imported here: scipy is slow to import and only SVHN needs it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about odd headers; we validate below
            mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except MemoryError:
        raise VaelabError(f"not enough memory to read {path}; free some memory and try again") from None
    except Exception as exc:  # scipy's readers raise many unrelated types on damaged files
        raise VaelabError(
            f"cannot read {path} as an SVHN format-2 .mat file ({reason(exc)}); "
            "delete it and download it again"
        ) from None
    return _validate(mat, path)


def _validate(mat: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = "delete it and download the official format-2 file again"
    for key, what in (("X", "images"), ("y", "labels")):
        if key not in mat:
            raise VaelabError(f"{path} has no variable {key} ({what}); it is not an SVHN format-2 file, {fix}")
    x, y = mat["X"], mat["y"]
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4 and x.shape[:3] == (32, 32, 3)):
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise VaelabError(f"{path}: X is {got}, expected uint8 of shape (32, 32, 3, N); {fix}")
    n = x.shape[3]
    if n == 0:
        raise VaelabError(f"{path} holds no images; {fix}")
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iuf" and y.size == n
            and (y.ndim == 1 or (y.ndim == 2 and 1 in y.shape))):
        got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise VaelabError(f"{path}: y is {got}, expected {n} numeric labels of shape ({n}, 1); {fix}")
    y = y.reshape(-1)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(y) & (y == np.round(y)) & (y >= 1) & (y <= 10)
    if not ok.all():
        bad = y[~ok][0]
        raise VaelabError(f"{path}: label {bad} is outside 1..10 (10 stands for digit 0); {fix}")
    labels = y.astype(np.int64) % 10  # format 2 stores digit 0 as 10
    # MATLAB layout X[h, w, c, n] -> images[n, c, h, w]
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, labels


def check_folder(folder: Path, split_names: list[str]) -> tuple[list[str], list[str]]:
    lines, usable = [], []
    for split in split_names:
        path = folder / SPLIT_FILES[split]
        if not path.is_file():
            lines.append(f"  missing  {path}")
            lines.append(f"  split {split}: unavailable (missing files)")
            continue
        lines.append(f"  present  {path}")
        images, labels = read_mat(path)
        lines.append(
            f"  split {split}: OK, {len(images)} images 3x32x32, labels 0..9 "
            "(X/y variables, shapes and label range verified)"
        )
        usable.append(split)
    return lines, usable
