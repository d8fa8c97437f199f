"""A split decoded once into a memory-mapped uint8 store, and batches gathered from it.

``vaelab data prepare NAME [--split S]`` writes, into ``<data dir>/<name>/store-<split>/``
(a ``folder:PATH`` dataset: ``<data dir>/folder-<hash of PATH>/store-<split>/``):

    images.npy   uint8 (N, C, H, W), opened with np.load(mmap_mode="r")
    labels.npy   int64 (N,)
    store.json   what it holds: dataset, split, conversion, shape, byte sizes, SHA-256s

store.json is written last, atomically, once both files are complete, fsynced and renamed
into place, and removed first when a store is rewritten: a store without it is half
written and is never opened. Opening checks the byte sizes and the .npy headers against it
(cheap, every time); preparing again verifies the checksums. With ``data.store=memmap``
training gathers each batch from the map (:class:`MappedImages`), so the split is never
held in memory: only pages in use are resident, and the OS can drop them at will.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..errors import VaelabError

from .download import file_digest

IMAGES, LABELS, MANIFEST = "images.npy", "labels.npy", "store.json"
FORMAT = "vaelab-store-1"
_WRITE_CHUNK = 8192  # images copied per step when writing: bounded memory beside the split


def store_dir(name: str, split: str, data_dir=None) -> Path:
    """Where the store of one split of ``name`` lives under the data directory."""
    from .dataset import _folder_root, _lookup, check_split_name, resolve_data_dir

    check_split_name(split)
    root = _folder_root(name)
    if root is not None:
        owner = "folder-" + hashlib.sha256(str(root).encode()).hexdigest()[:12]
    else:
        owner = _lookup(name)[0]
    return resolve_data_dir(data_dir) / owner / f"store-{split}"


def _prepare_command(name: str, split: str) -> str:
    return f"`vaelab data prepare {name} --split {split}`"


# --- writing ----------------------------------------------------------------------------


def write_store(folder: Path, shape: tuple[int, ...], chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                info: dict) -> Path:
    """Write a store of ``shape`` (N, C, H, W) from (images, labels) chunks, in order.

    ``info`` (dataset, split, conversion) goes into store.json. Checks the free disk space
    first; a disk-full or interrupted write leaves no store (and no temporary files).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = int(shape[0])
    need = math.prod(shape) + 8 * n + (1 << 20)  # the new files sit beside the old ones until renamed
    free = shutil.disk_usage(folder).free
    if free < need:  # refused before anything changes: an intact old store stays usable
        raise VaelabError(f"the store needs {need / 2**30:.2f} GiB in {folder}, which has {free / 2**30:.2f} GiB "
                          f"free: free some space or use another --data-dir")
    (folder / MANIFEST).unlink(missing_ok=True)  # the old store, if any, is unusable from here on
    tmp = {final: folder / f".{final}.tmp-{os.getpid()}" for final in (IMAGES, LABELS)}
    try:
        images = np.lib.format.open_memmap(tmp[IMAGES], mode="w+", dtype=np.uint8, shape=tuple(shape))
        labels = np.empty(n, np.int64)
        done = 0
        for chunk_images, chunk_labels in chunks:
            images[done:done + len(chunk_images)] = chunk_images
            labels[done:done + len(chunk_images)] = chunk_labels
            done += len(chunk_images)
        if done != n:
            raise VaelabError(f"the store of {folder} got {done} images, expected {n}")
        images.flush()
        del images
        with open(tmp[LABELS], "wb") as f:
            np.save(f, labels)
        for path in tmp.values():
            _fsync(path)
        for final, path in tmp.items():
            os.replace(path, folder / final)
    except BaseException as exc:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise VaelabError(f"cannot write the store in {folder}: {exc.strerror or exc}") from None
        raise
    manifest = dict(info, format=FORMAT, shape=[int(v) for v in shape],
                    **{f"{key}_bytes": (folder / f"{key}.npy").stat().st_size for key in ("images", "labels")},
                    **{f"{key}_sha256": file_digest(folder / f"{key}.npy", "sha256") for key in ("images", "labels")})
    from ..atomicio import atomic_write_bytes

    atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return folder


def prepare_store(name: str, split: str, data_dir=None, download: bool = False, image_size: int | None = None,
                  channels: int | None = None, force: bool = False) -> tuple[Path, bool]:
    """Decode one split and write its store, unless an intact one with the same conversion
    is there (its checksums are verified). Returns (folder, whether it was written).

    The split is decoded in memory once, here; training from the store never loads it.
    """
    from .dataset import load_dataset

    folder = store_dir(name, split, data_dir)
    info = {"dataset": name, "split": split, "image_size": image_size, "channels": channels}
    if not force and (folder / MANIFEST).is_file():
        try:
            manifest = verify_store(folder)
        except VaelabError:
            manifest = None  # damaged: written again below
        if manifest is not None and all(manifest.get(k) == v for k, v in info.items()):
            return folder, False
    dataset = load_dataset(name, split, data_dir=data_dir, download=download, image_size=image_size,
                           channels=channels)
    images, labels = dataset.images, dataset.labels
    chunks = ((images[s:s + _WRITE_CHUNK], labels[s:s + _WRITE_CHUNK]) for s in range(0, len(images), _WRITE_CHUNK))
    return write_store(folder, images.shape, chunks, info), True


# --- reading ----------------------------------------------------------------------------


def _manifest(folder: Path, fix: str) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        if (folder / IMAGES).exists():
            raise VaelabError(f"the store in {folder} is incomplete (no {MANIFEST}: its writing was interrupted); {fix}")
        raise VaelabError(f"no prepared store in {folder}; {fix}")
    try:
        manifest = json.loads(path.read_text())
        shape = tuple(int(v) for v in manifest["shape"])
        if manifest["format"] != FORMAT or len(shape) != 4:
            raise ValueError("not a vaelab store")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise VaelabError(f"the store in {folder} is damaged ({MANIFEST} unreadable: {exc}); {fix}") from None
    for key in ("images", "labels"):
        size = (folder / f"{key}.npy").stat().st_size if (folder / f"{key}.npy").exists() else None
        if size != manifest.get(f"{key}_bytes"):
            raise VaelabError(f"the store in {folder} is damaged ({key}.npy is {size} bytes, expected "
                              f"{manifest.get(f'{key}_bytes')}); {fix}")
    return manifest


def read_store(folder: Path, fix: str = "prepare it again") -> tuple[np.ndarray, np.ndarray, dict]:
    """The images (a read-only memory map), labels and manifest of the store in ``folder``."""
    folder = Path(folder)
    manifest = _manifest(folder, fix)
    shape = tuple(manifest["shape"])
    try:
        images = np.load(folder / IMAGES, mmap_mode="r")
        labels = np.load(folder / LABELS)
    except (ValueError, OSError, EOFError) as exc:
        raise VaelabError(f"the store in {folder} is damaged ({exc}); {fix}") from None
    if images.dtype != np.uint8 or images.shape != shape or labels.shape != shape[:1]:
        raise VaelabError(f"the store in {folder} is damaged (images {images.dtype} {images.shape}, labels "
                          f"{labels.shape}; {MANIFEST} says uint8 {shape}); {fix}")
    return images, labels.astype(np.int64, copy=False), manifest


def open_store(name: str, split: str, data_dir=None, image_size: int | None = None,
               channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The prepared store of one split: images as a read-only memory map, labels in memory."""
    from .dataset import _folder_root, splits

    folder = store_dir(name, split, data_dir)
    if _folder_root(name) is None and split not in splits(name):  # else the fix below would fail too
        raise VaelabError(f"{name} has no {split!r} split; choose one of {', '.join(splits(name))}")
    fix = f"run {_prepare_command(name, split)}"
    images, labels, manifest = read_store(folder, fix)
    wanted = {"image_size": image_size, "channels": channels}
    if any(manifest.get(k) != v for k, v in wanted.items()):
        raise VaelabError(f"the store in {folder} was prepared with image_size={manifest.get('image_size')}, "
                          f"channels={manifest.get('channels')}, but data.image_size={image_size}, "
                          f"data.channels={channels}; run {_prepare_command(name, split)} with the same settings")
    return images, labels


def verify_store(folder: Path) -> dict:
    """Check the sizes, headers and SHA-256 checksums of a store; returns its manifest."""
    images, labels, manifest = read_store(folder)
    del images, labels
    for key in ("images", "labels"):
        if file_digest(Path(folder) / f"{key}.npy", "sha256") != manifest.get(f"{key}_sha256"):
            raise VaelabError(f"the store in {folder} is damaged ({key}.npy does not match its checksum); "
                              f"prepare it again")
    return manifest


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# --- batches ----------------------------------------------------------------------------


class MappedImages:
    """Rows ``index`` of a uint8 (N, C, H, W) array, read only when asked for.

    Stands in for a uint8 tensor on the host without holding the array: ``len``, ``shape``
    and ``dtype`` are a tensor's, and indexing (a slice, an index tensor or array, a
    boolean mask) gathers just those rows into a new CPU tensor. Over a memory map, a
    training batch reads its rows from the page cache or the disk.
    """

    dtype = torch.uint8

    def __init__(self, array: np.ndarray, index: np.ndarray | None = None):
        self.array = array
        self.index = np.arange(len(array)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.array.shape[1:]))

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        rows = self.index[key]
        single = np.ndim(rows) == 0
        # fancy indexing copies, so the tensor owns writable memory, not the read-only map
        images = self.array[np.atleast_1d(rows)]
        return torch.from_numpy(images[0] if single else images)

    def __repr__(self) -> str:
        return f"MappedImages({tuple(self.shape)}, uint8)"
