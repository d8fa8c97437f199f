"""Registry, data folders, the built-in sample, check_dataset and argument checking."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from datafiles import make_idx_dataset, shared_data, svhn_arrays, write_mat
from vaelab.data import (
    Dataset,
    check_dataset,
    dataset_names,
    default_data_dir,
    describe_datasets,
    load_dataset,
    resolve_data_dir,
    splits,
)
from vaelab.errors import VaelabError

KNOWN = ["mnist-sample", "mnist", "fashion-mnist", "kmnist", "svhn", "cifar10"]


def test_names_and_descriptions():
    assert dataset_names() == KNOWN
    described = dict(describe_datasets())
    assert list(described) == KNOWN
    for name, text in described.items():
        assert "\n" not in text and "train" in text and ("28x28" in text or "32x32" in text)
    assert "extra" in described["svhn"]


def test_splits():
    assert splits("mnist") == ["train", "test"]
    assert splits("svhn") == ["train", "test", "extra"]
    assert splits("MNIST-Sample") == ["train", "test"]
    with pytest.raises(VaelabError, match="unknown dataset 'nope'.*folder:PATH"):
        splits("nope")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("VAELAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "vaelab"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "vaelab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == tmp_path / "home" / ".cache" / "vaelab"


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "cli") == tmp_path / "cli"  # --data-dir wins
    assert resolve_data_dir(str(tmp_path / "cli")) == tmp_path / "cli"
    assert resolve_data_dir() == tmp_path / "env"
    make_idx_dataset(tmp_path / "env")
    assert len(load_dataset("mnist")) == 30  # found through $VAELAB_DATA


def test_mnist_sample_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "does-not-exist"))
    train = load_dataset("mnist-sample", "train", data_dir=tmp_path / "ignored")
    test = load_dataset("mnist-sample", "test")
    assert train.images.shape == (8000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert train.images.flags.c_contiguous and test.images.flags.c_contiguous
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known start of MNIST t10k
    assert not (tmp_path / "ignored").exists()
    assert check_dataset("mnist-sample")[1].startswith("  split train: OK, 8000 images")


def test_mnist_sample_matches_real_t10k():
    data = shared_data()
    if data is None or not (data / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("shared data (../shared/data/mnist) not present")
    raw = gzip.decompress((data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(10000, 1, 28, 28)
    labels = np.frombuffer(gzip.decompress((data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)
    train, test = load_dataset("mnist-sample", "train"), load_dataset("mnist-sample", "test")
    np.testing.assert_array_equal(train.images, images[:8000])
    np.testing.assert_array_equal(test.images, images[-2000:])
    np.testing.assert_array_equal(train.labels, labels[:8000])
    np.testing.assert_array_equal(test.labels, labels[-2000:])


def test_builtin_files_and_license_ship_in_package():
    import vaelab

    folder = Path(vaelab.__file__).parent / "builtin"
    assert (folder / "t10k-images-idx3-ubyte.gz").is_file()
    license_text = (folder / "LICENSE-MNIST.txt").read_text()
    assert "LeCun" in license_text and "Cortes" in license_text and "Burges" in license_text
    assert "CC BY-SA 3.0" in license_text


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "validation"}, "no 'validation' split; choose one of train, test"),
    ({"split": 1}, "split must be a plain name"),
    ({"image_size": 0}, "data.image_size"),
    ({"image_size": 2.5}, "data.image_size"),
    ({"image_size": True}, "data.image_size"),
    ({"channels": 2}, "data.channels must be 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(VaelabError, match=match):
        load_dataset("mnist-sample", **kwargs)


def test_unknown_dataset():
    with pytest.raises(VaelabError, match="unknown dataset 'imagenet'; choose one of mnist-sample, mnist"):
        load_dataset("imagenet")


def test_sample_conversion():
    ds = load_dataset("mnist-sample", "test", image_size=32, channels=3)
    assert ds.images.shape == (2000, 3, 32, 32) and ds.images.dtype == np.uint8


def test_gray_from_rgb_matches_pillow():
    from PIL import Image

    from vaelab.data.convert import convert_images

    rgb = np.random.default_rng(0).integers(0, 256, (3, 3, 5, 7), dtype=np.uint8)
    gray = convert_images(rgb, channels=1)
    expected = np.asarray(Image.fromarray(rgb[1].transpose(1, 2, 0)).convert("L"))
    np.testing.assert_array_equal(gray[1, 0], expected)


def test_check_dataset_reports_and_raises(tmp_path):
    make_idx_dataset(tmp_path)
    lines = check_dataset("mnist", tmp_path)
    text = "\n".join(lines)
    assert "present" in text and "split train: OK, 30 images 1x28x28" in text and "split test: OK, 12 images" in text
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    text = "\n".join(check_dataset("mnist", tmp_path))  # train is still usable
    assert "missing" in text and "split test: unavailable" in text
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(VaelabError, match="train-images"):
        check_dataset("mnist", tmp_path)
    with pytest.raises(VaelabError, match="no usable split.*--download"):
        check_dataset("kmnist", tmp_path)


def test_check_svhn_without_extra(tmp_path):
    x, y = svhn_arrays()
    write_mat(tmp_path / "svhn" / "train_32x32.mat", X=x, y=y)
    text = "\n".join(check_dataset("svhn", tmp_path))
    assert "split train: OK, 7 images 3x32x32" in text and "extra_32x32.mat" in text


def test_dataset_type():
    ds = Dataset(np.zeros((2, 1, 3, 3), np.uint8), np.array([0, -1]), "x", "train")
    assert len(ds) == 2 and ds.labels.dtype == np.int64 and ds.classes is None
    with pytest.raises(VaelabError):
        Dataset(np.zeros((2, 3, 3), np.uint8), np.array([0, 1]), "x", "train")
    with pytest.raises(VaelabError):
        Dataset(np.zeros((2, 1, 3, 3), np.uint8), np.array([0]), "x", "train")
