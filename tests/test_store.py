"""The memory-mapped uint8 store: prepared once, verified, refused when damaged, and
training, validation, PCA, evaluation and resume read from it exactly as from memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.cli import main
from vaelab.config import Config
from vaelab.data import load_dataset
from vaelab.data import store as store_module
from vaelab.data.store import MappedImages, open_store, prepare_store, store_dir, verify_store, write_store
from vaelab.errors import VaelabError
from vaelab.prepared_data import prepare_data

TINY = ["data.name=mnist-sample", "data.limit=400", "model.hidden=32", "model.latent_dim=3",
        "train.batch_size=50", "train.device=cpu", "train.threads=1", "train.epochs=2"]


def tiny_config(data_dir, *extra: str) -> Config:
    config = Config()
    config.apply_overrides(TINY + [f"data.data_dir={data_dir}", *extra])
    return config.validate()


@pytest.fixture
def data_dir(tmp_path):
    """A data folder holding the prepared stores of the built-in sample's two splits."""
    folder = tmp_path / "data"
    for split in ("train", "test"):
        prepare_store("mnist-sample", split, folder)
    return folder


def test_store_holds_the_split_and_a_second_prepare_only_verifies(data_dir):
    images, labels = open_store("mnist-sample", "train", data_dir)
    reference = load_dataset("mnist-sample", "train")
    assert isinstance(images, np.memmap) and not images.flags.writeable
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.labels)
    assert sorted(p.name for p in store_dir("mnist-sample", "train", data_dir).iterdir()) == [
        "images.npy", "labels.npy", "store.json"]  # no temporary files left
    folder, written = prepare_store("mnist-sample", "train", data_dir)
    assert not written and verify_store(folder)["shape"] == [8000, 1, 28, 28]


def test_mapped_images_gather_only_the_rows_asked_for():
    array = np.arange(10 * 2 * 3 * 3, dtype=np.uint8).reshape(10, 2, 3, 3)
    view = MappedImages(array, np.array([1, 4, 6, 9]))
    assert len(view) == 4 and view.shape == (4, 2, 3, 3) and view.dtype == torch.uint8
    torch.testing.assert_close(view[1:3], torch.from_numpy(array[[4, 6]]))
    torch.testing.assert_close(view[torch.tensor([3, 0])], torch.from_numpy(array[[9, 1]]))
    torch.testing.assert_close(view[np.array([True, False, False, True])], torch.from_numpy(array[[1, 9]]))
    torch.testing.assert_close(view[2], torch.from_numpy(array[6]))
    assert view[:2].is_contiguous()


def test_training_from_the_store_matches_training_in_memory(data_dir, tmp_path, monkeypatch):
    asked = []
    getitem = MappedImages.__getitem__
    monkeypatch.setattr(MappedImages, "__getitem__", lambda self, key: asked.append(
        len(np.arange(len(self))[key.cpu().numpy() if isinstance(key, torch.Tensor) else key])) or getitem(self, key))
    mapped = vaelab.train(tiny_config(data_dir, "data.store=memmap"), tmp_path / "mapped", progress=False)
    # never the 360 training images at once: batches of 50, the 40 validation images
    assert asked and max(asked) <= 50
    memory = vaelab.train(tiny_config(data_dir), tmp_path / "memory", progress=False)
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (mapped, memory)]
    for a, b in zip(*rows):
        assert (a["train_loss"], a["val_elbo"]) == (b["train_loss"], b["val_elbo"])
    weights = [load_file(run / "model.safetensors") for run in (mapped, memory)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    # evaluation streams from the store too, and agrees
    for split in ("val", "test"):
        a = vaelab.load_run(mapped).evaluate(split, iw_samples=3, limit=300)
        b = vaelab.load_run(memory).evaluate(split, iw_samples=3, limit=300)
        assert a == b
    images, labels = vaelab.load_run(mapped).images("test")
    assert isinstance(images, MappedImages) and len(labels) == 2000


def test_resume_from_the_store_is_exact(data_dir, tmp_path):
    straight = vaelab.train(tiny_config(data_dir, "data.store=memmap"), tmp_path / "straight", progress=False)
    config = tiny_config(data_dir, "data.store=memmap", "train.epochs=1")
    resumed = vaelab.train(config, tmp_path / "resumed", progress=False)
    config.set("train.epochs", 2)
    vaelab.train(config, resumed, resume=True, progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pca_fitted_from_the_store_equals_the_in_memory_fit(data_dir):
    extra = ["data.transform=pca", "data.pca_components=20", "data.pca_fit_images=0"]
    mapped = prepare_data(tiny_config(data_dir, "data.store=memmap", *extra).data)
    memory = prepare_data(tiny_config(data_dir, *extra).data)
    assert isinstance(mapped.train, MappedImages) and isinstance(memory.train, torch.Tensor)
    torch.testing.assert_close(mapped.transform.components, memory.transform.components, rtol=0, atol=0)
    torch.testing.assert_close(mapped.train[:], memory.train)
    torch.testing.assert_close(mapped.val_labels, memory.val_labels)


def test_train_split_chooses_the_split_trained_on(data_dir):
    data = prepare_data(tiny_config(data_dir, "data.store=memmap", "data.train_split=test", "data.limit=0").data)
    assert len(data.train) + len(data.val) == 2000  # the sample's test split
    # a split the dataset does not have is named as such, not as a store to prepare
    with pytest.raises(VaelabError, match="has no 'extra' split; choose one of train, test"):
        prepare_data(tiny_config(data_dir, "data.store=memmap", "data.train_split=extra").data)


def _store_error(data_dir, capsys) -> str:
    """Train from the store through the CLI: exit 2 and one line on stderr."""
    capsys.readouterr()
    code = main(["train", "--preset", "mnist-mlp", *[f"--set={s}" for s in TINY],
                 "--set=data.store=memmap", "--data-dir", str(data_dir), "--out", str(data_dir.parent / "run"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("vaelab: error: ")
    assert not (data_dir.parent / "run").exists()
    return err


def test_missing_half_written_or_damaged_stores_are_refused_in_one_line(data_dir, capsys):
    folder = store_dir("mnist-sample", "train", data_dir)
    images = folder / "images.npy"
    original = images.read_bytes()
    images.write_bytes(original[:-100])  # truncated
    assert "damaged (images.npy is" in _store_error(data_dir, capsys)
    images.write_bytes(b"not a .npy header" + original[17:])  # the right size, a broken header
    assert "damaged (" in _store_error(data_dir, capsys)
    images.write_bytes(original)
    (folder / "store.json").write_text("{not json")
    assert "store.json unreadable" in _store_error(data_dir, capsys)
    (folder / "store.json").unlink()
    err = _store_error(data_dir, capsys)
    assert "incomplete" in err and "vaelab data prepare mnist-sample --split train" in err
    for path in folder.iterdir():
        path.unlink()
    assert "no prepared store" in _store_error(data_dir, capsys)


def test_flipped_bytes_fail_the_checksum_and_prepare_rewrites_the_store(data_dir):
    folder = store_dir("mnist-sample", "train", data_dir)
    raw = bytearray((folder / "images.npy").read_bytes())
    raw[-5] ^= 0xFF  # same size: only the checksum notices
    (folder / "images.npy").write_bytes(bytes(raw))
    with pytest.raises(VaelabError, match="does not match its checksum"):
        verify_store(folder)
    assert prepare_store("mnist-sample", "train", data_dir) == (folder, True)
    verify_store(folder)


def test_an_interrupted_write_leaves_no_store_and_no_temporary_files(tmp_path, monkeypatch):
    folder = tmp_path / "store"

    def chunks():
        yield np.zeros((5, 1, 2, 2), np.uint8), np.zeros(5)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_store(folder, (10, 1, 2, 2), chunks(), {})
    assert list(folder.iterdir()) == []
    with pytest.raises(VaelabError, match="got 5 images, expected 10"):
        write_store(folder, (10, 1, 2, 2), iter([(np.zeros((5, 1, 2, 2), np.uint8), np.zeros(5))]), {})
    assert list(folder.iterdir()) == []
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(VaelabError, match="GiB free"):
        write_store(folder, (10, 1, 2, 2), iter([]), {})


def test_prepare_command_and_bad_input(tmp_path, capsys):
    assert main(["data", "prepare", "mnist-sample", "--split", "test", "--data-dir", str(tmp_path)]) == 0
    assert "mnist-sample test: store" in capsys.readouterr().out
    assert main(["data", "prepare", "mnist-sample", "--split", "extra", "--data-dir", str(tmp_path)]) == 2
    assert "has no 'extra' split" in capsys.readouterr().err
    assert main(["data", "prepare", "nosuch", "--data-dir", str(tmp_path)]) == 2
    with pytest.raises(VaelabError, match="binarize-static draws the whole split"):
        tiny_config(tmp_path, "data.store=memmap", "data.transform=binarize-static")
    with pytest.raises(VaelabError, match="data.store must be"):
        tiny_config(tmp_path, "data.store=disk")


def test_folder_store_records_its_conversion(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "pictures"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    name = f"folder:{root}"
    assert main(["data", "prepare", name, "--data-dir", str(tmp_path / "d"), "--image-size", "8",
                 "--channels", "1"]) == 0
    images, _ = open_store(name, "train", tmp_path / "d", image_size=8, channels=1)
    assert images.shape == (6, 1, 8, 8)
    with pytest.raises(VaelabError, match="prepared with image_size=8, channels=1"):
        open_store(name, "train", tmp_path / "d")


def test_a_rewrite_without_room_leaves_the_old_store_usable(data_dir, monkeypatch):
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(VaelabError, match="GiB free"):
        prepare_store("mnist-sample", "test", data_dir, force=True)
    images, labels = open_store("mnist-sample", "test", data_dir)
    assert images.shape == (2000, 1, 28, 28) and len(labels) == 2000
