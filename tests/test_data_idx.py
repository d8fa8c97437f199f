"""IDX datasets (mnist, fashion-mnist, kmnist): round trips and bad files."""

import gzip
import time
import tracemalloc

import numpy as np
import pytest

from datafiles import IDX_FILES, idx_bytes, make_idx_dataset, write_idx
from vaelab.data import Dataset, load_dataset
from vaelab.errors import VaelabError


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path, name, gz):
    arrays = make_idx_dataset(tmp_path, name, gz=gz)
    for split in ("train", "test"):
        images, labels = arrays[split]
        ds = load_dataset(name, split, data_dir=tmp_path)
        assert isinstance(ds, Dataset)
        assert (ds.name, ds.split, len(ds)) == (name, split, len(images))
        assert ds.images.dtype == np.uint8 and ds.images.flags.c_contiguous
        assert ds.images.shape == (len(images), 1, 28, 28)
        assert ds.labels.dtype == np.int64
        np.testing.assert_array_equal(ds.images[:, 0], images)
        np.testing.assert_array_equal(ds.labels, labels)
        # orientation: row h, column w of image n is byte 16 + n*784 + h*28 + w of the file
        assert ds.images[3, 0, 5, 20] == images[3, 5, 20]
        assert len(ds.classes) == 10


def test_pixel_position_from_known_bytes(tmp_path):
    """A single bright pixel written at (row 2, col 7) comes back there, not transposed."""
    images = np.zeros((2, 28, 28), np.uint8)
    images[1, 2, 7] = 255
    for split, (img_name, lab_name) in IDX_FILES.items():
        write_idx(tmp_path / "mnist" / img_name, images)
        write_idx(tmp_path / "mnist" / lab_name, np.array([3, 9]))
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.images[1, 0, 2, 7] == 255 and ds.images.sum() == 255
    assert ds.labels.tolist() == [3, 9]


def test_conversion_options(tmp_path):
    arrays = make_idx_dataset(tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path, channels=3, image_size=32)
    assert ds.images.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(ds.images[:, 0], ds.images[:, 2])
    same = load_dataset("mnist", data_dir=tmp_path, channels=1, image_size=28)
    np.testing.assert_array_equal(same.images[:, 0], arrays["train"][0])


def _replace(tmp_path, filename, data: bytes):
    (tmp_path / "mnist" / filename).write_bytes(data)


def test_truncated_gz(tmp_path):
    make_idx_dataset(tmp_path)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(VaelabError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path)


def test_corrupt_gzip_bytes(tmp_path):
    make_idx_dataset(tmp_path)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(VaelabError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path)


def test_gzip_header_only_garbage(tmp_path):
    make_idx_dataset(tmp_path)
    _replace(tmp_path, "train-labels-idx1-ubyte.gz", b"\x1f\x8b" + b"garbage" * 5)
    with pytest.raises(VaelabError, match="train-labels"):
        load_dataset("mnist", data_dir=tmp_path)


def _train_images(tmp_path, gz: bool):
    """Write a valid dataset (gzipped or not); return the path of its training images, to spoil."""
    make_idx_dataset(tmp_path, gz=gz)
    return tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))


@pytest.mark.parametrize("gz", [True, False])
def test_wrong_magic(tmp_path, gz):
    path = _train_images(tmp_path, gz)
    write_idx(path, np.zeros((30, 28, 28), np.uint8), gz=gz, magic=2049, dims=(30, 28, 28))
    with pytest.raises(VaelabError, match="magic number 2049, expected 2051"):
        load_dataset("mnist", data_dir=tmp_path)


def test_labels_file_in_place_of_images(tmp_path):
    make_idx_dataset(tmp_path)
    labels_gz = (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes()
    _replace(tmp_path, "train-images-idx3-ubyte.gz", labels_gz)
    with pytest.raises(VaelabError, match="not an IDX images file"):
        load_dataset("mnist", data_dir=tmp_path)


def test_count_mismatch(tmp_path):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(VaelabError, match="30 images but .* 29 labels"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_size_does_not_match_header(tmp_path, gz):
    path = _train_images(tmp_path, gz)
    data = idx_bytes(np.zeros((30, 28, 28), np.uint8))
    for bad in (data[:-1], data + b"\0"):  # one byte short, one byte extra
        path.write_bytes(gzip.compress(bad) if gz else bad)
        with pytest.raises(VaelabError, match="train-images"):
            load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_huge_declared_count_fails_fast_without_allocating(tmp_path, gz):
    path = _train_images(tmp_path, gz)
    write_idx(path, np.zeros((2, 28, 28), np.uint8), gz=gz, dims=(2**31, 28, 28))  # declares 1.7 TB
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(VaelabError, match="header declares"):
            load_dataset("mnist", data_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2
    assert peak < 20 * 2**20, f"peak allocation {peak} bytes"


def test_huge_dimensions_labels(tmp_path):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), dims=(2**32 - 1,))
    with pytest.raises(VaelabError, match="header declares"):
        load_dataset("mnist", data_dir=tmp_path)


def test_zero_sized_images_rejected(tmp_path):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((30, 0, 28), np.uint8))
    with pytest.raises(VaelabError, match="0x28"):
        load_dataset("mnist", data_dir=tmp_path)


def test_label_out_of_range(tmp_path):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.full(30, 12, np.uint8))
    with pytest.raises(VaelabError, match="label 12"):
        load_dataset("mnist", data_dir=tmp_path)


def test_empty_file(tmp_path):
    make_idx_dataset(tmp_path)
    _replace(tmp_path, "t10k-images-idx3-ubyte.gz", b"")
    with pytest.raises(VaelabError, match="too short"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    # the other split is unaffected
    assert len(load_dataset("mnist", "train", data_dir=tmp_path)) == 30


def test_missing_files_message_lists_them(tmp_path):
    make_idx_dataset(tmp_path)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(VaelabError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "mnist") in msg
    assert "--download" in msg and "vaelab data download mnist" in msg and "VAELAB_DATA" in msg
    assert "\n" not in msg


def test_missing_everything_in_empty_dir(tmp_path):
    with pytest.raises(VaelabError, match="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
