"""CIFAR-10 from the official python tarball, read with a restricted unpickler."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import VaelabError

from ._text import reason
from .download import safe_extract_tar, tar_member_names

TARBALL = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
SPLIT_BATCHES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch pickle may name: builtins and numpy array rebuilding."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # pickle protocol 5
        if hasattr(numeric, "_frombuffer"):
            allowed[(module, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for module in ("builtins", "__builtin__"):  # Python 2 pickles name the builtins module so
        for typ in (dict, list, bytes, str, int):
            allowed[(module, typ.__name__)] = typ
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global outside the allow-list, so a pickle cannot run code."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def unpickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one CIFAR-10 batch file."""
    fix = "it is not an official CIFAR-10 batch; delete the folder and extract the official tarball again"
    try:
        raw = path.read_bytes()
        # encoding="bytes": the official batches were pickled by Python 2 (bytes keys)
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except MemoryError:
        raise VaelabError(f"{path}: not enough memory to read it, or the pickle is damaged; {fix}") from None
    except OSError as exc:
        raise VaelabError(f"cannot read {path}: {reason(exc)}; check the file and its permissions") from None
    except Exception as exc:  # pickle raises many types on damaged data
        raise VaelabError(f"cannot unpickle {path} ({reason(exc)}); {fix}") from None
    if not isinstance(obj, dict):
        raise VaelabError(f"{path} holds a {type(obj).__name__}, expected a dict; {fix}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise VaelabError(f"{path}: 'data' is {got}, expected uint8 of shape (N, 3072); {fix}")
    # a flat list of ints only: nested lists (which a pickle can share, thousands deep, in a few
    # bytes) would make np.asarray build gigabytes
    if isinstance(labels, list) and (len(labels) != len(data) or not all(type(v) is int for v in labels)):
        labels = None
    labels = np.asarray(labels) if isinstance(labels, (list, np.ndarray)) else None
    if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise VaelabError(f"{path}: 'labels' is missing or is not {len(data)} integers; {fix}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise VaelabError(f"{path}: labels must be 0..9, found {int(labels.min())}..{int(labels.max())}; {fix}")
    # each row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return images, labels.astype(np.int64)


def missing_files(folder: Path, split: str) -> list[str]:
    """Files needed for ``split`` that are absent; none if the tarball can provide them."""
    batch_dir = folder / BATCH_DIR
    missing = [f"{BATCH_DIR}/{b}" for b in SPLIT_BATCHES[split] if not (batch_dir / b).is_file()]
    if missing and not batch_dir.exists() and (folder / TARBALL).is_file():
        return []  # will be extracted on load
    if missing and not batch_dir.exists():
        return [TARBALL]
    return missing


def ensure_extracted(folder: Path) -> None:
    """Extract the tarball if the batch folder does not exist yet."""
    if not (folder / BATCH_DIR).exists() and (folder / TARBALL).is_file():
        safe_extract_tar(folder / TARBALL, folder)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    ensure_extracted(folder)
    batch_dir = folder / BATCH_DIR
    absent = [b for b in SPLIT_BATCHES[split] if not (batch_dir / b).is_file()]
    if absent:
        raise VaelabError(
            f"{batch_dir} is incomplete (missing {', '.join(absent)}); delete that folder and load again "
            f"to re-extract it from {TARBALL} (with --download if the tarball is not in {folder})"
        )
    parts = [unpickle_batch(batch_dir / b) for b in SPLIT_BATCHES[split]]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def check_folder(folder: Path, split_names: list[str]) -> tuple[list[str], list[str]]:
    lines, usable = [], []
    batch_dir, tarball = folder / BATCH_DIR, folder / TARBALL
    if not batch_dir.exists():
        if not tarball.is_file():
            lines.append(f"  missing  {tarball} (and no extracted {batch_dir})")
            lines += [f"  split {s}: unavailable (missing files)" for s in split_names]
            return lines, usable
        names = set(tar_member_names(tarball))  # checks that every member is safe to extract
        lines.append(f"  present  {tarball} (members checked, safe to extract; extracted on first load)")
        for split in split_names:
            absent = [b for b in SPLIT_BATCHES[split] if f"{BATCH_DIR}/{b}" not in names]
            if absent:
                lines.append(f"  split {split}: unavailable (tarball lacks {', '.join(absent)})")
            else:
                lines.append(f"  split {split}: batches present in the tarball (not yet unpickled)")
                usable.append(split)
        return lines, usable
    for split in split_names:
        total, ok = 0, True
        for b in SPLIT_BATCHES[split]:
            path = batch_dir / b
            if not path.is_file():
                lines.append(f"  missing  {path}")
                ok = False
                continue
            images, _ = unpickle_batch(path)
            total += len(images)
            lines.append(f"  present  {path}: {len(images)} images 3x32x32 (restricted unpickle, shapes verified)")
        if ok:
            lines.append(f"  split {split}: OK, {total} images 3x32x32")
            usable.append(split)
        else:
            lines.append(f"  split {split}: unavailable (missing files)")
    return lines, usable
