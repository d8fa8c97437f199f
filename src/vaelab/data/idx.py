"""IDX files (MNIST, Fashion-MNIST, KMNIST), gzip-compressed or raw, parsed with numpy."""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import VaelabError

from ._text import reason

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_NDIM = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}
_KIND = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}
_CHUNK = 1 << 20

# Official file names per split; the raw (decompressed) names drop ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def find_file(folder: Path, gz_name: str) -> Path | None:
    """The .gz file if present, else its decompressed twin, else None."""
    for candidate in (folder / gz_name, folder / gz_name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def read_idx(source: Path | bytes, magic: int, name: str | None = None, count: int | None = None) -> np.ndarray:
    """Parse one IDX file (path or bytes; gzip detected by content) into a uint8 array.

    The header is checked against ``magic``, ``count`` (the number of items expected, when
    known) and the data length (a gzip file's: the uncompressed size its trailer records)
    before anything is decompressed or allocated, so a lying header costs nothing.
    """
    label = name or str(source)
    try:
        if isinstance(source, (bytes, bytearray)):
            return _read_any(io.BytesIO(source), len(source), magic, label, count)
        with open(source, "rb") as f:
            return _read_any(f, os.fstat(f.fileno()).st_size, magic, label, count)
    except VaelabError:
        raise
    except PermissionError:
        raise VaelabError(f"cannot read {label}: permission denied; fix the file's permissions") from None
    except (OSError, EOFError, zlib.error, struct.error, ValueError) as exc:
        # gzip.BadGzipFile is an OSError; EOFError means a truncated gzip stream
        raise VaelabError(f"cannot read {label}: {reason(exc)}; the file is damaged, delete it and download it again") from None
    except MemoryError:
        raise VaelabError(f"not enough memory to read {label}; free some memory or use a smaller dataset") from None


def _read_any(f, size: int, magic: int, label: str, count: int | None) -> np.ndarray:
    if f.read(2) == b"\x1f\x8b":
        f.seek(size - 4)  # the gzip trailer: the uncompressed size, modulo 2**32
        isize = int.from_bytes(f.read(4), "little") if size >= 18 else None
        f.seek(0)
        with gzip.GzipFile(fileobj=f, mode="rb") as stream:
            return _parse(stream, None, magic, label, count, isize)
    f.seek(0)
    return _parse(f, size, magic, label, count)


def _parse(stream, size: int | None, magic: int, label: str, count: int | None = None,
           isize: int | None = None) -> np.ndarray:
    """Read header then data; ``size`` is the exact byte length when known (raw files),
    ``isize`` a gzip stream's uncompressed length modulo 2**32."""
    kind = _KIND[magic]
    header = _read_upto(stream, 4)
    if len(header) < 4:
        raise VaelabError(f"{label} is too short to be an IDX file ({len(header)} bytes); delete it and download it again")
    found = int.from_bytes(header, "big")
    if found != magic:
        raise VaelabError(
            f"{label} is not an IDX {kind} file (magic number {found}, expected {magic}); "
            "check that the file is the right one and not damaged"
        )
    ndim = _NDIM[magic]
    raw_dims = _read_upto(stream, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise VaelabError(f"{label} ends inside its IDX header; the file is truncated, delete it and download it again")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    if magic == IMAGES_MAGIC and (dims[1] == 0 or dims[2] == 0):
        raise VaelabError(f"{label} declares images of size {dims[1]}x{dims[2]}; the file is damaged, delete it and download it again")
    expected = math.prod(dims)  # exact Python int: no overflow for absurd headers
    header_len = 4 + 4 * ndim
    shape_text = "x".join(map(str, dims))
    if isize is not None and isize != (header_len + expected) % 2**32:
        raise VaelabError(
            f"{label} decompresses to {isize} bytes (modulo 4 GiB, by its gzip trailer) but its header declares "
            f"{shape_text} = {expected} bytes of data; the file is damaged, delete it and download it again")
    if size is not None and size != header_len + expected:
        raise VaelabError(
            f"{label} holds {size - header_len} bytes of data but its header declares "
            f"{shape_text} = {expected}; the file is truncated or damaged, delete it and download it again"
        )
    if count is not None and dims[0] != count:
        raise VaelabError(f"{label} has {dims[0]} {kind} but its labels file has {count} labels; "
                          "the files do not belong together, replace them with a matching pair")
    if size is not None:  # raw file of verified length: read straight into the final array
        data = np.empty(expected, dtype=np.uint8)
        got = stream.readinto(memoryview(data))
    else:  # gzip: the real length is unknown, so grow with what is really there
        data = _read_upto(stream, expected)
        got = len(data)
    if got < expected:
        raise VaelabError(
            f"{label} holds {got} bytes of data but its header declares {shape_text} = {expected}; "
            "the file is truncated or damaged, delete it and download it again"
        )
    if stream.read(1):
        raise VaelabError(f"{label} has data after the {shape_text} {kind} its header declares; the file is damaged, delete it and download it again")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _read_upto(stream, n: int) -> bytearray:
    """Read at most ``n`` bytes in chunks, so memory follows the data actually present."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def load_pair(images_path: Path | bytes, labels_path: Path | bytes, num_classes: int = 10,
              names: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from an IDX images/labels pair."""
    img_name, lab_name = names or (str(images_path), str(labels_path))
    labels = read_idx(labels_path, LABELS_MAGIC, lab_name)  # first: small, and it says how many images to expect
    images = read_idx(images_path, IMAGES_MAGIC, img_name, count=len(labels))
    if len(images) != len(labels):
        raise VaelabError(
            f"{img_name} has {len(images)} images but {lab_name} has {len(labels)} labels; "
            "the files do not belong together, replace them with a matching pair"
        )
    if len(images) == 0:
        raise VaelabError(f"{img_name} holds no images; replace it with the official file")
    if labels.max() >= num_classes:
        raise VaelabError(
            f"{lab_name} has label {int(labels.max())}, expected 0..{num_classes - 1}; "
            "the file is damaged or from another dataset"
        )
    return images[:, None, :, :], labels.astype(np.int64)


def load_split(folder: Path, split: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Load one split from ``folder``; missing files are the caller's concern (see find_file)."""
    img_name, lab_name = SPLIT_FILES[split]
    return load_pair(find_file(folder, img_name), find_file(folder, lab_name), num_classes)


def missing_files(folder: Path, split: str) -> list[str]:
    return [name for name in SPLIT_FILES[split] if find_file(folder, name) is None]


def check_folder(folder: Path, split_names: list[str], num_classes: int = 10) -> tuple[list[str], list[str]]:
    """Report lines for each expected file, and the splits that loaded cleanly."""
    lines, usable = [], []
    for split in split_names:
        gz_images, gz_labels = SPLIT_FILES[split]
        paths = [find_file(folder, gz_images), find_file(folder, gz_labels)]
        for gz_name, path in zip((gz_images, gz_labels), paths):
            lines.append(f"  {'present' if path else 'missing'}  {path or folder / gz_name}")
        if None in paths:
            lines.append(f"  split {split}: unavailable (missing files)")
            continue
        images, labels = load_pair(paths[0], paths[1], num_classes)
        h, w = images.shape[2:]
        lines.append(
            f"  split {split}: OK, {len(images)} images 1x{h}x{w}, {len(labels)} labels "
            f"in 0..{int(labels.max())} (IDX magic, dimensions, byte length and counts verified)"
        )
        usable.append(split)
    return lines, usable
