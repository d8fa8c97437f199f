"""SVHN format 2 (cropped 32x32 digits) from the official MATLAB .mat files."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..errors import VaelabError

from ._text import reason

SPLIT_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 (digit 0 stored as 10 becomes 0)."""
    import scipy.io  # imported here: scipy is slow to import and only SVHN needs it

    check_mat_structure(path)  # scipy's compiled reader trusts the tags: a bad one can crash the process
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


# MAT-file level 5: element types (miINT8 ... miUINT64) and their sizes, the matrix classes
_MI_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}
_MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 5, 6, 14, 15
_NUMERIC_CLASSES = range(6, 16)  # mxDOUBLE_CLASS ... mxUINT64_CLASS
_COMPLEX_OR_LOGICAL = 0x08 | 0x02
_HEADER_BYTES = 1024  # a compressed variable's header lies in its first bytes


def check_mat_structure(path: Path) -> None:
    """Walk a level-5 MAT-file's tags (inside compressed variables too) and check that each
    numeric variable's header, dimensions and data size agree and lie within the file, before
    scipy reads it: one flipped byte in a tag otherwise crashes scipy's compiled reader."""
    fix = "the file is damaged or not an SVHN format-2 file; delete it and download it again"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(128)
            if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
                raise ValueError("no MAT-file level 5 header")
            order = "<" if header[126:128] == b"IM" else ">"
            if struct.unpack(order + "H", header[124:126])[0] != 0x0100:
                raise ValueError("not a MAT-file level 5 (MATLAB v7.3 and v4 files are not SVHN format 2)")
            position = 128
            while position < size:
                f.seek(position)
                kind, length = struct.unpack(order + "II", _exactly(f, 8))
                if position + 8 + length > size:
                    raise ValueError(f"the variable at byte {position} runs past the end of the file")
                if kind == _MI_COMPRESSED:
                    inner = _inflate_start(f, length)
                    kind, inner_length = struct.unpack(order + "II", inner[:8])
                    if kind != _MI_MATRIX:
                        raise ValueError(f"compressed data at byte {position} is not a matrix")
                    _check_matrix(inner[8:], inner_length, order)
                elif kind == _MI_MATRIX:
                    _check_matrix(f.read(min(length, _HEADER_BYTES)), length, order)
                else:
                    raise ValueError(f"unexpected element type {kind} at byte {position}")
                position += 8 + length
    except OSError as exc:
        raise VaelabError(f"cannot read {path}: {reason(exc)}") from None
    except (ValueError, struct.error, zlib.error, IndexError) as exc:
        raise VaelabError(f"{path} is not a valid MAT-file ({reason(exc)}); {fix}") from None


def _exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("the file ends inside a tag")
    return data


def _inflate_start(f, length: int) -> bytes:
    """The first bytes of a compressed variable, decompressing no more than needed."""
    inflater, out, left = zlib.decompressobj(), b"", length
    while len(out) < _HEADER_BYTES and left > 0 and not inflater.eof:
        chunk = f.read(min(left, 4096))
        if not chunk:
            break
        left -= len(chunk)
        out += inflater.decompress(chunk, _HEADER_BYTES - len(out))
    if len(out) < 8:
        raise ValueError("a compressed variable is empty")
    return out


def _check_matrix(body: bytes, length: int, order: str) -> None:
    """A matrix's flags, dimensions, name and real part: consistent, and within ``length``."""
    if length == 0:
        return  # an empty placeholder variable
    position, parts = 0, []
    for _ in range(4):  # flags, dimensions, name, real part
        kind, count = struct.unpack(order + "II", body[position:position + 8])
        if kind >> 16:  # small element: type and count in one word, data in the next 4 bytes
            kind, count, step = kind & 0xFFFF, kind >> 16, 8
            if count > 4:
                raise ValueError("a small data element claims more than 4 bytes")
        else:
            step = 8 + count + (-count % 8)
        parts.append((kind, count, body[position + 8:position + 8 + min(count, 64)]))
        if len(parts) == 3 and not _numeric(parts[0], order):
            return  # not numeric (char, cell, struct): scipy checks and skips it; X and y are checked later
        position += step
        if position > length:
            raise ValueError("a matrix's parts run past its end")
    (flags_kind, flags_count, flags), (dims_kind, dims_count, dims), _, (real_kind, real_count, _) = parts
    if dims_kind != _MI_INT32 or dims_count < 8 or dims_count % 4 or dims_count > 64:
        raise ValueError("bad matrix dimensions")
    shape = struct.unpack(order + f"{dims_count // 4}i", dims)
    if min(shape) < 0:
        raise ValueError("negative matrix dimensions")
    if real_kind not in _MI_SIZES or real_count != _MI_SIZES[real_kind] * int(np.prod(shape, dtype=object)):
        raise ValueError(f"a matrix of shape {shape} holds {real_count} bytes of type {real_kind}")


def _numeric(flags_part: tuple, order: str) -> bool:
    kind, count, data = flags_part
    if kind != _MI_UINT32 or count != 8:
        raise ValueError("bad array flags")
    word = struct.unpack(order + "I", data[:4])[0]
    if (word >> 8) & _COMPLEX_OR_LOGICAL:
        raise ValueError("a complex or logical matrix")
    return (word & 0xFF) in _NUMERIC_CLASSES


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
