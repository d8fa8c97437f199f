"""The `vaelab` command end to end, and its answer to bad input: one line, exit 2."""

import json
import subprocess
import sys

import pytest

from vaelab.cli import main

TINY = ["--set", "data.name=mnist-sample", "--set", "data.limit=600", "--set", "model.hidden=32",
        "--set", "model.latent_dim=3", "--set", "train.epochs=1", "--set", "train.batch_size=100"]


def run_cli(*args, cwd=None):
    """Run the real console entry point in a subprocess: exit status, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--preset", "mnist-mlp", *TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_train_eval_sample_reconstruct(trained_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--iw-samples", "10", "--limit", "200", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("elbo", "recon", "kl", "nll_iw", "iw_samples", "bits_per_dim", "active_units",
                "n_images", "split", "dataset"):
        assert key in result, key
    assert result["iw_samples"] == 10 and result["n_images"] == 200 and result["dataset"] == "mnist-sample"
    assert result["nll_iw"] <= -result["elbo"] + 2.0
    assert main(["eval", str(trained_run), "--iw-samples", "5", "--limit", "50", "--split", "val"]) == 0
    assert "ELBO" in capsys.readouterr().out
    assert main(["sample", str(trained_run), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(trained_run), "-n", "8", "--out", str(tmp_path / "r.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[0] > 28 * 4
    assert Image.open(tmp_path / "r.png").size[1] > 28 * 2


def test_listing_commands(capsys):
    assert main(["presets"]) == 0
    assert "mnist-mlp" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "svhn" in out and "folder:PATH" in out
    assert main(["config"]) == 0
    assert "model.latent_dim" in capsys.readouterr().out
    assert main(["data", "check", "mnist-sample"]) == 0


def test_resume_from_the_cli(trained_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--quiet"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


@pytest.mark.parametrize("args,needle", [
    (["train", "--preset", "mnist-mlp", "--set", "model.latent_dims=2", "--out", "{tmp}/x"], "did you mean model.latent_dim"),
    (["train", "--preset", "mnist-mlp", "--set", "model.latent_dim=0", "--out", "{tmp}/x"], "latent_dim must be at least 1"),
    (["train", "--preset", "mnist-mlp", "--set", "train.lr=-1", "--out", "{tmp}/x"], "train.lr must be a positive"),
    (["train", "--preset", "nope", "--out", "{tmp}/x"], "unknown preset"),
    (["train", "--preset", "mnist-mlp", "--set", "data.data_dir={tmp}/nodata", "--out", "{tmp}/x"], "train-images-idx3-ubyte"),
    (["train", "--config", "{tmp}/missing.json", "--out", "{tmp}/x"], "does not exist"),
    (["eval", "{tmp}"], "not a vaelab run directory"),
    (["sample", "{tmp}", "--out", "{tmp}/s.png"], "not a vaelab run directory"),
    (["export", "{tmp}", "--out", "{tmp}/x"], "not a vaelab run directory"),
    (["train", "--set", "train.epochs=1", "--out", "{tmp}/x"], "needs --preset"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run_cli(*args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vaelab: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written


def test_existing_run_is_not_overwritten_from_the_cli(trained_run):
    before = (trained_run / "model.safetensors").read_bytes()
    code, _, err = run_cli("train", "--preset", "mnist-mlp", *TINY, "--out", trained_run)
    assert code == 2 and "--overwrite" in err
    assert (trained_run / "model.safetensors").read_bytes() == before


def test_demo_runs_offline_and_writes_pictures(tmp_path):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--quiet", "--iw-samples", "5",
                 "--set", "train.epochs=1", "--set", "data.limit=500"])
    assert code == 0
    assert (tmp_path / "demo" / "samples.png").is_file()
    assert (tmp_path / "demo" / "reconstructions.png").is_file()
    # a second demo never overwrites the first
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet", "--iw-samples", "5",
                 "--set", "train.epochs=1", "--set", "data.limit=500"]) == 0
    assert (tmp_path / "demo-2" / "samples.png").is_file()
