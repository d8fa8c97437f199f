"""Helpers for the data tests: real-format fixture writers, a local HTTP server, shared data.

Imported explicitly by tests/test_data_*.py (pytest does not load it on its own).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def shared_data() -> Path | None:
    """../shared/data beside the checkout (or $VAELAB_SHARED_DATA), if it exists."""
    env = os.environ.get("VAELAB_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- IDX -------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """An IDX file (raw) holding ``array``; ``magic``/``dims`` override the header."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    dims = dims if dims is not None else array.shape
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True, **header) -> Path:
    data = idx_bytes(array, **header)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def make_idx_dataset(root: Path, name: str = "mnist", n_train: int = 30, n_test: int = 12,
                     seed: int = 0, gz: bool = True, size: int = 28):
    """Write the four official IDX files under root/name; return {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        img_name, lab_name = IDX_FILES[split]
        if not gz:
            img_name, lab_name = img_name[:-3], lab_name[:-3]
        write_idx(root / name / img_name, images, gz=gz)
        write_idx(root / name / lab_name, labels, gz=gz)
        arrays[split] = (images, labels)
    return arrays


# --- SVHN ------------------------------------------------------------------------------


def svhn_arrays(n: int = 7, seed: int = 0, y_dtype=np.uint8):
    """X (32, 32, 3, N) uint8 and y (N, 1) with 1..10 (10 = digit 0), as format 2 stores them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(y_dtype)
    y[0, 0] = 10  # always include the "10 means 0" case
    return x, y


def write_mat(path: Path, **variables) -> Path:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables, format="5")
    return path


# --- CIFAR-10 --------------------------------------------------------------------------


def cifar_batch_bytes(data: np.ndarray, labels: list[int], protocol: int = 4) -> bytes:
    """A batch pickle like the official ones: dict with bytes keys."""
    batch = {
        b"batch_label": b"testing batch",
        b"labels": list(map(int, labels)),
        b"data": np.asarray(data, dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=protocol)


def cifar_arrays(n_per_batch: int = 4, seed: int = 0):
    """{batch name: (data (n, 3072), labels)} for the five train batches and the test batch."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {
        name: (rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
               rng.integers(0, 10, size=n_per_batch).tolist())
        for name in names
    }


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar_tar(path: Path, batches: dict, extra_members=()) -> Path:
    """A cifar-10-python.tar.gz holding cifar-10-batches-py/<batch>; ``extra_members`` are
    (TarInfo, bytes-or-None) pairs added first (for crafted, malicious archives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, data in extra_members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for name, (data, labels) in batches.items():
            add_bytes(tar, f"cifar-10-batches-py/{name}", cifar_batch_bytes(data, labels))
        add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": []}, protocol=4))
    return path


# --- image folders ---------------------------------------------------------------------


def write_image(path: Path, array: np.ndarray, fmt: str | None = None, **save_args) -> Path:
    """Save an (H, W) or (H, W, 3) uint8 array with Pillow."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format=fmt, **save_args)
    return path


# --- local HTTP server -----------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """(folder served, base URL) of a local HTTP server on 127.0.0.1, shut down afterwards."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
