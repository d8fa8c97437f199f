"""Samples from a Gaussian mixture fitted to the codes (`vaelab sample --fitted-prior K`)."""

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.expost import fit_code_mixture, sample_fitted
from vaelab.prepared_data import train_val_rows
from vaelab.rundir.load import load_run

TINY = ["--set", "data.name=mnist-sample", "--set", "data.limit=600", "--set", "model.hidden=32",
        "--set", "model.latent_dim=3", "--set", "train.epochs=1", "--set", "train.batch_size=100"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("expost") / "run"
    assert main(["train", "--preset", "mnist-mlp", *TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_one_component_is_the_codes_mean_and_covariance(trained_run):
    # every training image (more asked for than there are), none of the held-out ones
    run = load_run(trained_run)
    images, _ = run.images("train")
    train_rows, val_rows = train_val_rows(run.config.data, len(images))
    assert len(val_rows) > 0
    codes = run.encode(images[torch.from_numpy(np.sort(train_rows))])[0].double().numpy()
    mixture = fit_code_mixture(run, components=1, fit_images=10_000)
    np.testing.assert_allclose(mixture.means_[0], codes.mean(0), atol=1e-6)
    expected = np.cov(codes, rowvar=False, ddof=0) + 1e-4 * np.eye(codes.shape[1])
    np.testing.assert_allclose(mixture.covariances_[0], expected, atol=1e-6)


def test_samples_are_images_and_repeat_with_the_seed(trained_run):
    run = load_run(trained_run)
    first = sample_fitted(run, 12, seed=3, components=2, fit_images=300)
    assert first.shape == (12, 1, 28, 28) and torch.isfinite(first).all()
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    assert torch.equal(first, sample_fitted(run, 12, seed=3, components=2, fit_images=300))
    assert not torch.equal(first, sample_fitted(run, 12, seed=4, components=2, fit_images=300))


def test_cli_fitted_prior(trained_run, tmp_path, capsys):
    out = tmp_path / "fitted.png"
    assert main(["sample", str(trained_run), "-n", "16", "--fitted-prior", "3", "--fit-images", "400",
                 "--out", str(out)]) == 0
    assert "not the model's prior" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(out).size[0] > 28 * 4


@pytest.mark.parametrize("flags", [["--fitted-prior", "1000"], ["--fitted-prior", "-2"],
                                   ["--fitted-prior", "3", "--fit-images", "1"]])
def test_cli_refuses_bad_fit_settings(trained_run, tmp_path, capsys, flags):
    out = tmp_path / "x.png"
    assert main(["sample", str(trained_run), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be from" in err
    assert not out.exists()


def test_too_few_training_images_for_the_components(trained_run):
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError, match="too few"):
        fit_code_mixture(load_run(trained_run), components=100, fit_images=150)
