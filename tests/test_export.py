"""`vaelab export`: a model folder that loads like a run, without executing anything, and
gives the same samples and eval numbers as the run it came from."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import vaelab
from vaelab.cli import main
from vaelab.rundir.checkpoint import load_tensors

# real MNIST images (the built-in sample) through a fitted PCA, so the transform travels too
TINY_PCA = ["--set", "data.name=mnist-sample", "--set", "data.limit=600", "--set", "model.hidden=32",
            "--set", "model.latent_dim=3", "--set", "train.epochs=1", "--set", "train.batch_size=100",
            "--set", "data.transform=pca", "--set", "data.pca_components=20", "--set", "model.likelihood=gaussian",
            "--set", "train.threads=1"]
EVAL = ["--iw-samples", "5", "--limit", "200", "--seed", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every evaluation here on one thread: float sums split over another number of threads
    differ in the last bits, and the round trip is compared exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("export")
    run_dir, model_dir = folder / "run", folder / "model"
    assert main(["train", "--preset", "mnist-mlp", *TINY_PCA, "--out", str(run_dir), "--quiet"]) == 0
    assert main(["export", str(run_dir), "--out", str(model_dir), *EVAL]) == 0
    return run_dir, model_dir


def test_the_folder_holds_weights_transform_config_and_a_model_card(exported):
    run_dir, model_dir = exported
    assert sorted(p.name for p in model_dir.iterdir()) == ["README.md", "config.json", "eval.json", "metrics.jsonl",
                                                           "model.json", "model.safetensors"]
    tensors, _ = load_tensors(model_dir / "model.safetensors")
    original, _ = load_tensors(run_dir / "model.safetensors")
    assert tensors.keys() == original.keys() and all(torch.equal(tensors[k], original[k]) for k in tensors)
    assert "pca.components" in tensors and tensors["pca.components"].shape == (20, 784)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["data"]["data_dir"] is None  # no folder of the exporting machine
    record = json.loads((model_dir / "eval.json").read_text())
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vaelab\n")
    assert f"{record['result']['elbo']:.2f}" in card and record["command"] in card
    assert record["command"] == "vaelab eval MODEL_DIR --split test --iw-samples 5 --seed 1 --limit 200 --json"
    # nothing in the folder is a pickle or a zip archive (torch.save's format)
    assert not any(p.read_bytes()[:2] in (b"PK", b"\x80\x04", b"\x80\x02") for p in model_dir.iterdir())


def test_round_trip_same_samples_and_eval_numbers_without_executing_code(exported, monkeypatch):
    run_dir, model_dir = exported

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model folder must not unpickle anything")

    original = vaelab.load_run(run_dir)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model = vaelab.load_run(model_dir)
    assert torch.equal(model.sample(16, seed=7), original.sample(16, seed=7))
    images, _ = original.images("test")
    assert torch.equal(model.reconstruct(images[:8]), original.reconstruct(images[:8]))
    record = json.loads((model_dir / "eval.json").read_text())
    again = model.evaluate("test", iw_samples=5, limit=200, seed=1)
    assert again == record["result"] == original.evaluate("test", iw_samples=5, limit=200, seed=1)


def test_commands_take_the_folder_as_a_run(exported, tmp_path, capsys):
    run_dir, model_dir = exported
    capsys.readouterr()
    assert main(["eval", str(model_dir), *EVAL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((model_dir / "eval.json").read_text())["result"]
    assert main(["sample", str(model_dir), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(model_dir), "-n", "4", "--out", str(tmp_path / "r.png")]) == 0


def test_bad_exports_are_one_clear_error_and_nothing_replaced(exported, tmp_path, capsys):
    run_dir, model_dir = exported
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    cases = [
        (["export", str(run_dir), "--out", str(model_dir)], "already exists: pass --overwrite"),
        (["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")], "not a vaelab run directory"),
        (["export", str(run_dir), "--out", str(run_dir), "--overwrite"], "the run directory itself"),
        (["export", str(run_dir), "--out", str(tmp_path / "m"), "--iw-samples", "-1"], "0 or more"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vaelab: error:") and needle in err and "\n" not in err
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (tmp_path / "m").exists()
    # a run whose data are not at hand still exports, without numbers
    assert main(["export", str(run_dir), "--out", str(tmp_path / "bare"), "--no-eval"]) == 0
    assert not (tmp_path / "bare" / "eval.json").exists()
    assert "Not evaluated at export" in (tmp_path / "bare" / "README.md").read_text()
