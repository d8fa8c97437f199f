"""CIFAR-10: official tarball layout, safe extraction, restricted unpickling."""

import os
import pickle
import tarfile

import numpy as np
import pytest

from datafiles import add_bytes, cifar_arrays, cifar_batch_bytes, write_cifar_tar
from vaelab.data import check_dataset, load_dataset
from vaelab.data.download import safe_extract_tar
from vaelab.errors import VaelabError

TARBALL = "cifar-10-python.tar.gz"


def test_round_trip_from_tarball(tmp_path):
    batches = cifar_arrays(n_per_batch=4)
    write_cifar_tar(tmp_path / "cifar10" / TARBALL, batches)
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").is_file()
    assert train.images.shape == (20, 3, 32, 32) and train.images.flags.c_contiguous
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images.reshape(20, -1), expected)
    # row layout: 1024 red, 1024 green, 1024 blue; each plane row-major
    data_b2 = batches["data_batch_2"][0]
    assert train.images[4 + 1, 1, 3, 7] == data_b2[1, 1024 + 3 * 32 + 7]
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(test.images.reshape(4, -1), batches["test_batch"][0])
    assert test.labels.tolist() == batches["test_batch"][1]
    assert not [p for p in (tmp_path / "cifar10").iterdir() if p.name.startswith(".extract")]


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_batch_pickled_with_other_protocols(tmp_path, protocol):
    """Re-pickled by Python 3 with str keys (protocol 5 rebuilds arrays with _frombuffer)."""
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = cifar_arrays(n_per_batch=3)
    for name, (data, labels) in batches.items():
        batch = {"data": data, "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    ds = load_dataset("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.images.reshape(3, -1), batches["test_batch"][0])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload", [
    lambda: pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=4),
    lambda: pickle.dumps(_Evil(), protocol=0),
    lambda: pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1],
                          b"x": pickle.loads}, protocol=4),  # any other global, even harmless
])
def test_malicious_pickle_refused(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(payload())
    with pytest.raises(VaelabError, match="refused global"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_malicious_pickle_inside_tarball(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    batches = cifar_arrays(n_per_batch=2)
    evil = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    data = pickle.dumps(_Evil(), protocol=4)
    evil.size = len(data)
    batches.pop("test_batch")
    write_cifar_tar(tmp_path / "cifar10" / TARBALL, batches, extra_members=[(evil, data)])
    with pytest.raises(VaelabError, match="refused global"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps([1, 2, 3], protocol=4),
                                     pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=4),
                                     pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=4),
                                     pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=4),
                                     pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, protocol=4)])
def test_damaged_batches(tmp_path, content):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(VaelabError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_truncated_batch(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = cifar_batch_bytes(np.zeros((5, 3072), np.uint8), [1] * 5)
    (folder / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(VaelabError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def _crafted_tar(tmp_path, info, data=b"x"):
    batches = cifar_arrays(n_per_batch=1)
    if info.isfile():
        info.size = len(data)
    return write_cifar_tar(tmp_path / "cifar10" / TARBALL, batches,
                           extra_members=[(info, data if info.isfile() else None)])


@pytest.mark.parametrize("name", ["../evil.txt", "cifar-10-batches-py/../../evil.txt", "/tmp/vaelab-evil.txt"])
def test_tar_path_traversal_refused(tmp_path, name):
    _crafted_tar(tmp_path, tarfile.TarInfo(name))
    with pytest.raises(VaelabError, match="escapes"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()  # nothing extracted at all


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_tar_links_and_devices_refused(tmp_path, kind):
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_0")
    info.type = kind
    info.linkname = "/etc/passwd"
    _crafted_tar(tmp_path, info)
    with pytest.raises(VaelabError, match="link or special file"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()


def test_safe_extract_plain_archive(tmp_path):
    tar_path = tmp_path / "a.tar"
    with tarfile.open(tar_path, "w") as tar:
        add_bytes(tar, "./top/sub/file.bin", b"hello")
    created = safe_extract_tar(tar_path, tmp_path / "out")
    assert created == [tmp_path / "out" / "top"]
    assert (tmp_path / "out" / "top" / "sub" / "file.bin").read_bytes() == b"hello"


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b\x08garbage-garbage", b"plain text, not a tar"])
def test_damaged_tarball(tmp_path, content):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / TARBALL).write_bytes(content)
    with pytest.raises(VaelabError, match=TARBALL):
        load_dataset("cifar10", data_dir=tmp_path)


def test_truncated_tarball(tmp_path):
    path = write_cifar_tar(tmp_path / "cifar10" / TARBALL, cifar_arrays(n_per_batch=50))
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(VaelabError, match=TARBALL):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()


def test_missing_everything(tmp_path):
    with pytest.raises(VaelabError, match=r"missing cifar-10-python\.tar\.gz in .*cifar10.*--download"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_incomplete_extracted_folder(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(cifar_batch_bytes(np.zeros((1, 3072), np.uint8), [0]))
    with pytest.raises(VaelabError, match="data_batch_2"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_check_reports_tarball_without_extracting(tmp_path):
    write_cifar_tar(tmp_path / "cifar10" / TARBALL, cifar_arrays(n_per_batch=1))
    lines = check_dataset("cifar10", data_dir=tmp_path)
    assert any("safe to extract" in line for line in lines)
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()
    load_dataset("cifar10", data_dir=tmp_path)
    lines = check_dataset("cifar10", data_dir=tmp_path)
    assert any("split train: OK, 5 images" in line for line in lines)
