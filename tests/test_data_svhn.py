"""SVHN format 2 (.mat) files written by scipy exactly as published."""

import numpy as np
import pytest

from datafiles import svhn_arrays, write_mat
from vaelab.data import load_dataset
from vaelab.errors import VaelabError

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


@pytest.mark.parametrize("split", ["train", "test", "extra"])
@pytest.mark.parametrize("y_dtype", [np.uint8, np.float64])
def test_round_trip(tmp_path, split, y_dtype):
    x, y = svhn_arrays(n=9, seed=len(split), y_dtype=y_dtype)
    write_mat(tmp_path / "svhn" / FILES[split], X=x, y=y)
    ds = load_dataset("svhn", split, data_dir=tmp_path)
    assert ds.images.shape == (9, 3, 32, 32) and ds.images.dtype == np.uint8
    assert ds.images.flags.c_contiguous
    # X[h, w, c, n] -> images[n, c, h, w]
    assert ds.images[4, 2, 5, 17] == x[5, 17, 2, 4]
    np.testing.assert_array_equal(ds.images, x.transpose(3, 2, 0, 1))
    assert ds.labels.dtype == np.int64
    assert ds.labels[0] == 0  # 10 means the digit 0
    np.testing.assert_array_equal(ds.labels, y[:, 0].astype(np.int64) % 10)
    assert ds.labels.min() >= 0 and ds.labels.max() <= 9


def test_orientation_single_pixel(tmp_path):
    x = np.zeros((32, 32, 3, 2), np.uint8)
    x[3, 30, 1, 1] = 200  # row 3, column 30, green, second image
    write_mat(tmp_path / "svhn" / "train_32x32.mat", X=x, y=np.array([[1], [10]], np.uint8))
    ds = load_dataset("svhn", data_dir=tmp_path)
    assert ds.images[1, 1, 3, 30] == 200 and ds.images.sum() == 200
    assert ds.labels.tolist() == [1, 0]


def _expect_error(tmp_path, match, **variables):
    write_mat(tmp_path / "svhn" / "train_32x32.mat", **variables)
    with pytest.raises(VaelabError, match=match):
        load_dataset("svhn", data_dir=tmp_path)


def test_missing_x(tmp_path):
    _, y = svhn_arrays()
    _expect_error(tmp_path, "no variable X", y=y)


def test_missing_y(tmp_path):
    x, _ = svhn_arrays()
    _expect_error(tmp_path, "no variable y", X=x)


@pytest.mark.parametrize("bad_x", [
    np.zeros((28, 28, 3, 5), np.uint8),     # wrong image size
    np.zeros((5, 3, 32, 32), np.uint8),     # already (N, C, H, W): not format 2
    np.zeros((32, 32, 3, 5), np.float64),   # wrong dtype
    np.zeros((32, 32, 3), np.uint8),        # wrong rank
])
def test_wrong_x_shape_or_dtype(tmp_path, bad_x):
    _expect_error(tmp_path, "X is", X=bad_x, y=np.ones((5, 1), np.uint8))


def test_label_count_mismatch(tmp_path):
    x, _ = svhn_arrays(n=5)
    _expect_error(tmp_path, "y is", X=x, y=np.ones((4, 1), np.uint8))


@pytest.mark.parametrize("bad", [0, 11, 2.5])
def test_labels_out_of_range(tmp_path, bad):
    x, y = svhn_arrays(n=5, y_dtype=np.float64)
    y[2, 0] = bad
    _expect_error(tmp_path, "outside 1..10", X=x, y=y)


def test_empty_split(tmp_path):
    _expect_error(tmp_path, "no images", X=np.zeros((32, 32, 3, 0), np.uint8), y=np.zeros((0, 1), np.uint8))


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file" + b"\0" * 30, b"\x89HDF\r\n\x1a\n" + b"\0" * 600])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "svhn" / "test_32x32.mat"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(VaelabError, match="test_32x32.mat"):
        load_dataset("svhn", "test", data_dir=tmp_path)


def test_truncated_mat(tmp_path):
    x, y = svhn_arrays(n=20)
    path = write_mat(tmp_path / "svhn" / "train_32x32.mat", X=x, y=y)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VaelabError, match="train_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path)


def test_missing_extra_names_file(tmp_path):
    x, y = svhn_arrays()
    write_mat(tmp_path / "svhn" / "train_32x32.mat", X=x, y=y)
    with pytest.raises(VaelabError, match=r"missing extra_32x32\.mat in .*svhn.*--download"):
        load_dataset("svhn", "extra", data_dir=tmp_path)
