"""Real datasets from ../shared/data (or $VAELAB_SHARED_DATA); skipped when absent."""

import gzip
import hashlib
import time

import numpy as np
import pytest

from datafiles import shared_data
from vaelab.data import check_dataset, load_dataset
from vaelab.errors import VaelabError

SHARED = shared_data()

# md5 of the decompressed official files (from the shared data README / the MNIST site)
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

needs_mnist = pytest.mark.skipif(SHARED is None or not (SHARED / "mnist").is_dir(),
                                 reason="real MNIST (../shared/data/mnist) not present")
needs_cifar = pytest.mark.skipif(SHARED is None or not (SHARED / "cifar10" / "train").is_dir(),
                                 reason="real CIFAR-10 JPEGs (../shared/data/cifar10/train) not present")


@needs_mnist
def test_mnist_real_files_and_load():
    raw = {}
    for name, expected in MNIST_RAW_MD5.items():
        raw[name] = gzip.decompress((SHARED / "mnist" / name).read_bytes())
        assert hashlib.md5(raw[name]).hexdigest() == expected, name
    start = time.perf_counter()
    train = load_dataset("mnist", "train", data_dir=SHARED)
    elapsed = time.perf_counter() - start
    test = load_dataset("mnist", "test", data_dir=SHARED)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.images.flags.c_contiguous
    # what we load is exactly the md5-verified content
    assert train.images.tobytes() == raw["train-images-idx3-ubyte.gz"][16:]
    assert test.labels.tolist() == list(raw["t10k-labels-idx1-ubyte.gz"][8:])
    for ds in (train, test):
        assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == set(range(10))
    assert train.labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert elapsed < 10, f"loading MNIST train took {elapsed:.1f} s"
    lines = check_dataset("mnist", SHARED)
    assert any("split train: OK, 60000 images" in line for line in lines)


@needs_cifar
@pytest.mark.slow
def test_cifar_folder_real():
    start = time.perf_counter()
    ds = load_dataset(f"folder:{SHARED / 'cifar10' / 'train'}")
    elapsed = time.perf_counter() - start
    assert ds.images.shape == (50000, 3, 32, 32) and ds.images.dtype == np.uint8
    assert ds.classes == CIFAR_CLASSES
    assert np.bincount(ds.labels).tolist() == [5000] * 10
    assert 60 < ds.images.mean() < 200  # real photos, not blank
    assert elapsed < 60, f"loading 50,000 JPEGs took {elapsed:.1f} s"
    # the parent folder has train/ only: "train" selects it, "test" is refused
    with pytest.raises(VaelabError, match="validation fraction"):
        load_dataset(f"folder:{SHARED / 'cifar10'}", "test")
