"""A folder of images (any format Pillow reads), with optional class subfolders."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import VaelabError

from ._text import reason
from .convert import square_resize

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_BATCH = 512  # files per worker task: amortizes scheduling over many tiny images
_SETTINGS_HINT = "set data.image_size and data.channels to convert every image to one size and mode"


@lru_cache(maxsize=1)
def _format_by_extension() -> dict[str, str]:
    """Pillow format name for each file extension it can open (lower case, with the dot)."""
    import warnings

    from PIL import Image

    Image.init()
    # Pillow warns of images over its pixel limit on opening; _decode refuses them in one line instead
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return {ext.lower(): fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def image_extensions() -> frozenset[str]:
    """File extensions Pillow can open (lower case, with the dot)."""
    return frozenset(_format_by_extension())


def _open(path: Path):
    """Open with the format the extension names first (probing every plugin is slow)."""
    from PIL import Image

    fmt = _format_by_extension().get(path.suffix.lower())
    if fmt:
        try:
            return Image.open(path, formats=[fmt])
        except Image.UnidentifiedImageError:  # misnamed file: fall back to probing
            pass
    return Image.open(path)


def has_split_folders(root: Path) -> bool:
    """True when ``root/train`` exists: then ``train``/``test`` subfolders are the splits."""
    return (root / "train").is_dir()


def folder_splits(root: Path) -> list[str]:
    _require_dir(root)
    if has_split_folders(root):
        return ["train", "test"] if (root / "test").is_dir() else ["train"]
    return ["train"]


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise VaelabError(f"folder:{root}: no such directory; give the path of a folder of images as folder:PATH")


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted, skipping hidden files and folders."""
    exts = image_extensions()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found += [Path(dirpath) / f for f in filenames if _visible(f) and Path(f).suffix.lower() in exts
                  and (Path(dirpath) / f).is_file()]  # a FIFO or device named *.png would block the read
    return sorted(found)


def _class_names(*roots: Path) -> list[str]:
    names = set()
    for root in roots:
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and _visible(p.name))
    return sorted(names)


def list_images(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str] | None, Path]:
    """Files, labels, class names (None without subfolders) and the folder used for ``split``."""
    _require_dir(root)
    if has_split_folders(root):
        if not (root / split).is_dir():
            raise VaelabError(
                f"folder:{root} has no {split}/ subfolder; add one, or hold out part of train "
                "with the validation fraction instead"
            )
        base = root / split
        classes = _class_names(root / "train", root / "test")  # same label numbers in both splits
    elif split == "train":
        base = root
        classes = _class_names(root)
    else:
        raise VaelabError(
            f"folder:{root} has no {split} split (no train/ and {split}/ subfolders); "
            "hold out part of train with the validation fraction instead"
        )
    files, labels = [], []
    exts = image_extensions()
    loose = sorted(p for p in base.iterdir() if p.is_file() and _visible(p.name) and p.suffix.lower() in exts)
    files += loose
    labels += [-1] * len(loose)
    for index, name in enumerate(classes):
        if (base / name).is_dir():
            members = _images_under(base / name)
            files += members
            labels += [index] * len(members)
    if not files:
        raise VaelabError(
            f"folder:{base} contains no image files (looked for {', '.join(sorted(exts)[:8])}, ...); "
            "point folder:PATH at a folder of images or class subfolders"
        )
    return files, np.asarray(labels, dtype=np.int64), (classes or None), base


class _Bad(Exception):
    """Problem with one file; carries a full message."""


def _decode(path: Path, channels: int | None, size: int | None) -> np.ndarray:
    """One image as (C, H, W) uint8, converted as asked; raises _Bad on any failure."""
    from PIL import Image

    try:
        with _open(path) as im:
            width, height = im.size
            if width * height > Image.MAX_IMAGE_PIXELS:  # Pillow only warns below twice its limit
                raise _Bad(f"{path} is {width}x{height} pixels, more than the {Image.MAX_IMAGE_PIXELS:,} an image "
                           f"may have here (a decompression bomb?); shrink it or remove it")
            if size and im.format == "JPEG":
                im.draft(im.mode, (size, size))  # let libjpeg downscale big photos cheaply
            im.load()
            if im.mode.startswith("I;16"):  # 16-bit gray: keep the high byte, do not clip
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8), "L")
            if channels is None and (im.mode in _ALPHA_MODES or "transparency" in im.info):
                # one rule for every conversion: done when data.channels asks, never silently
                # (dropping alpha is as much a conversion as grey -> RGB, which is refused too)
                raise _Bad(f"{path} has an alpha channel ({im.mode}); {_SETTINGS_HINT} (alpha is dropped)")
            want = {1: "L", 3: "RGB"}.get(channels) or ("L" if im.mode in _GRAY_MODES else "RGB")
            if im.mode != want:
                im = im.convert(want)
            if size and im.size != (size, size):
                im = square_resize(im, size)
            arr = np.asarray(im, dtype=np.uint8)
    except MemoryError:
        raise _Bad(f"not enough memory to decode {path}; set data.image_size to a smaller size") from None
    except _Bad:
        raise
    except Exception as exc:  # Pillow's plugins raise many exception types on bad files
        raise _Bad(f"cannot read image {path} ({reason(exc)}); fix or remove that file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _describe(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{w}x{h} {'grayscale' if c == 1 else 'RGB'}"


def load_images(files: list[Path], channels: int | None = None, size: int | None = None,
                workers: int | None = None) -> np.ndarray:
    """Decode ``files`` into one (N, C, H, W) uint8 array using a thread pool.

    Without ``channels``/``size`` every image must match the first one; otherwise
    VaelabError names the first file (in sorted order) that differs or cannot be read.
    """
    first = _decode_or_raise(files[0], channels, size)
    shape = first.shape
    _check_memory(len(files), shape, files[0])
    out = np.empty((len(files),) + shape, dtype=np.uint8)
    out[0] = first

    def work(start: int) -> tuple[int, str] | None:
        """Fill out[start:start+_BATCH]; return the first problem in this batch, if any."""
        for i in range(max(start, 1), min(start + _BATCH, len(files))):
            try:
                arr = _decode(files[i], channels, size)
            except _Bad as exc:
                return i, str(exc)
            if arr.shape != shape:
                return i, (
                    f"{files[i]} is {_describe(arr.shape)} but {files[0]} is {_describe(shape)}; "
                    f"images in a folder must all match, or {_SETTINGS_HINT}"
                )
            out[i] = arr
        return None

    # Pillow releases the GIL while decoding, so threads overlap file reads and decoding.
    workers = workers or min(4, (os.cpu_count() or 1) + 1)  # measured: more threads only contend
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = [p for p in pool.map(work, range(0, len(files), _BATCH)) if p]
    if problems:
        raise VaelabError(min(problems)[1])
    return out


def _decode_or_raise(path: Path, channels: int | None, size: int | None) -> np.ndarray:
    try:
        return _decode(path, channels, size)
    except _Bad as exc:
        raise VaelabError(str(exc)) from None


def _check_memory(n: int, shape: tuple[int, ...], example: Path) -> None:
    need = n * int(np.prod(shape))
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on every platform
        return
    if need > total:
        raise VaelabError(
            f"{n} images of {_describe(shape)} (like {example}) need {need / 2**30:.1f} GiB, more than "
            f"this machine's {total / 2**30:.1f} GiB of memory; set data.image_size to a smaller size"
        )


def load_folder(root: Path, split: str, channels: int | None = None, size: int | None = None):
    """Images, labels, class names for ``folder:root``."""
    files, labels, classes, _ = list_images(root, split)
    return load_images(files, channels, size), labels, classes
