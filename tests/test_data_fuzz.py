"""Fuzzing the readers: for any bytes, the only outcomes are a Dataset or a VaelabError."""

import gzip
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datafiles import cifar_batch_bytes, idx_bytes, write_image, write_mat
from vaelab.data import Dataset, load_dataset
from vaelab.errors import VaelabError

FUZZ_EXAMPLES = 200  # per fuzz test; README cites this number

# Pillow warns about the damaged files we feed it on purpose
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _outcome(name, split="train", **kwargs):
    """Load and return the Dataset, or None for a VaelabError; anything else fails the test."""
    try:
        ds = load_dataset(name, split, **kwargs)
    except VaelabError as exc:
        assert "\n" not in str(exc)
        return None
    assert isinstance(ds, Dataset)
    assert ds.images.dtype == np.uint8 and ds.images.ndim == 4 and ds.labels.shape == (len(ds),)
    return ds


@st.composite
def mutated(draw, base: bytes):
    """``base`` with a few byte flips (biased to the header), then maybe truncated or extended."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        limit = draw(st.sampled_from([min(len(data), 64), len(data)])) - 1
        data[draw(st.integers(0, limit))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    return bytes(data) + draw(st.binary(max_size=draw(st.sampled_from([0, 0, 8]))))


# --- IDX -------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
_IMAGES = idx_bytes(_RNG.integers(0, 256, (3, 5, 4), dtype=np.uint8))
_LABELS = idx_bytes(np.array([1, 2, 3], np.uint8))


def _write_mnist(folder: Path, images: bytes, labels: bytes, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    (folder / f"train-images-idx3-ubyte{suffix}").write_bytes(images)
    (folder / f"train-labels-idx1-ubyte{suffix}").write_bytes(labels)


@fuzz
@given(images=st.binary(max_size=600), gz_name=st.booleans())
def test_idx_random_bytes(images, gz_name):
    with tempfile.TemporaryDirectory() as tmp:
        _write_mnist(Path(tmp, "mnist"), images, gzip.compress(_LABELS), gz_name)
        _outcome("mnist", data_dir=tmp)


@fuzz
@given(data=st.data(), target=st.sampled_from(["images", "labels"]),
       mode=st.sampled_from(["raw", "gzip-of-mutated", "mutated-gzip"]))
def test_idx_mutated_files(data, target, mode):
    base = _IMAGES if target == "images" else _LABELS
    if mode == "mutated-gzip":
        blob = data.draw(mutated(gzip.compress(base, mtime=0)))
    else:
        blob = data.draw(mutated(base))
        blob = gzip.compress(blob) if mode == "gzip-of-mutated" else blob
    other = _LABELS if target == "images" else _IMAGES
    gz = mode != "raw"
    other = gzip.compress(other) if gz else other
    pair = (blob, other) if target == "images" else (other, blob)
    with tempfile.TemporaryDirectory() as tmp:
        _write_mnist(Path(tmp, "mnist"), *pair, gz=gz)
        ds = _outcome("mnist", data_dir=tmp)
    if ds is not None:
        assert ds.images.shape[:2] == (len(ds), 1)


# --- SVHN .mat -------------------------------------------------------------------------


def _valid_mat() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(1).integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
        path = write_mat(Path(tmp, "m.mat"), X=x, y=np.array([[10], [3]], np.uint8))
        return path.read_bytes()


_MAT = _valid_mat()


@fuzz
@given(content=st.one_of(st.binary(max_size=400), mutated(_MAT), st.builds(lambda b: _MAT[:128] + b, st.binary(max_size=200))))
def test_mat_random_and_mutated(content):
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "svhn").mkdir()
        Path(tmp, "svhn", "test_32x32.mat").write_bytes(content)
        ds = _outcome("svhn", "test", data_dir=tmp)
    if ds is not None:
        assert ds.images.shape[1:] == (3, 32, 32) and ds.labels.min() >= 0 and ds.labels.max() <= 9


# --- CIFAR batch pickles ---------------------------------------------------------------

_BATCH = cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [1, 2])


@fuzz
@given(content=st.one_of(st.binary(max_size=300), mutated(_BATCH)))
def test_cifar_batch_random_and_mutated(content):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "cifar10", "cifar-10-batches-py")
        folder.mkdir(parents=True)
        Path(folder, "test_batch").write_bytes(content)
        cwd = os.getcwd()
        os.chdir(tmp)  # so that any (wrongly allowed) file-writing payload would land here
        try:
            _outcome("cifar10", "test", data_dir=tmp)
        finally:
            os.chdir(cwd)
        assert sorted(os.listdir(tmp)) == ["cifar10"]


# --- image folders ---------------------------------------------------------------------


def _encoded(fmt: str, **args) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(buf, fmt, **args)
    return buf.getvalue()


_IMAGES_BY_EXT = {".png": _encoded("PNG"), ".jpg": _encoded("JPEG"), ".gif": _encoded("GIF"),
                  ".bmp": _encoded("BMP"), ".webp": _encoded("WEBP"), ".tif": _encoded("TIFF")}


@fuzz
@given(data=st.data(), ext=st.sampled_from(sorted(_IMAGES_BY_EXT)), random=st.booleans(),
       size=st.sampled_from([None, 4]))
def test_folder_random_image_bytes(data, ext, random, size):
    content = data.draw(st.binary(max_size=300)) if random else data.draw(mutated(_IMAGES_BY_EXT[ext]))
    with tempfile.TemporaryDirectory() as tmp:
        write_image(Path(tmp, "a", "good.png"), np.zeros((6, 5, 3), np.uint8))
        Path(tmp, "b").mkdir()
        Path(tmp, "b", "fuzzed" + ext).write_bytes(content)
        _outcome(f"folder:{tmp}", image_size=size)
