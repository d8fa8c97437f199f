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


def _encoded_rows(run, monkeypatch, split):
    """Wrap run.encode: the rows of ``split`` whose images it was given, in order."""
    images, _ = run.images(split)
    row_of = {bytes(image.numpy().tobytes()): i for i, image in enumerate(images)}
    seen, encode = [], run.encode

    def recording(batch, *args, **kwargs):
        seen.extend(row_of.get(bytes(image.numpy().tobytes()), -1) for image in torch.as_tensor(batch))
        return encode(batch, *args, **kwargs)

    monkeypatch.setattr(run, "encode", recording)
    return seen


def test_a_subset_is_drawn_from_the_training_rows_only(trained_run, monkeypatch):
    run = load_run(trained_run)
    train_rows, val_rows = train_val_rows(run.config.data, len(run.images("train")[0]))
    seen = _encoded_rows(run, monkeypatch, "train")
    fit_code_mixture(run, components=2, fit_images=100, seed=5)
    assert len(seen) == 100 and len(set(seen)) == 100
    assert set(seen) <= set(train_rows.tolist()) and not set(seen) & set(val_rows.tolist())


def test_the_fit_reads_the_runs_own_training_split(trained_run, monkeypatch):
    # a run trained on another split (data.train_split) is fitted on that split's images
    run = load_run(trained_run)
    run.config.data.train_split = "test"
    seen = _encoded_rows(run, monkeypatch, "test")
    fit_code_mixture(run, components=2, fit_images=50)
    assert len(seen) == 50 and min(seen) >= 0


def test_draws_follow_the_fitted_mixture(trained_run, monkeypatch):
    # one component: the decoded codes have the training codes' mean and covariance, within Monte-Carlo error
    run = load_run(trained_run)
    mixture = fit_code_mixture(run, components=1, fit_images=10_000)
    decoded, decode = [], run.decode

    def recording(z, classes=None):
        decoded.append(z)
        return decode(z, classes)

    monkeypatch.setattr(run, "decode", recording)
    n = 4000
    images = sample_fitted(run, n, seed=1, components=1, fit_images=10_000)
    assert images.shape == (n, 1, 28, 28)
    z = decoded[0].double().numpy()
    mean, cov = mixture.means_[0], mixture.covariances_[0]
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(z.mean(0) - mean) < 4 * sd / np.sqrt(n))
    # the sample variance's standard error is about sqrt(2 / n) of the variance
    np.testing.assert_allclose(np.cov(z, rowvar=False), cov, atol=4 * np.sqrt(2 / n) * sd.max() ** 2)


def test_collapsed_codes_are_refused_in_one_line(trained_run, monkeypatch):
    from vaelab.errors import VaelabError

    run = load_run(trained_run)
    encode = run.encode

    def collapsed(batch, *args, **kwargs):
        means, stds = encode(batch, *args, **kwargs)
        return torch.zeros_like(means), stds

    monkeypatch.setattr(run, "encode", collapsed)
    with pytest.raises(VaelabError, match="1 distinct values.*collapsed"):
        fit_code_mixture(run, components=3, fit_images=300)


def test_too_few_images_asked_for_names_the_fix(trained_run):
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError, match=r"--fit-images 20"):
        fit_code_mixture(load_run(trained_run), components=10, fit_images=12)


def test_non_finite_decodes_are_refused(trained_run):
    from vaelab.errors import VaelabError

    run = load_run(trained_run)
    with torch.no_grad():
        next(run.model.decoder.parameters()).fill_(float("inf"))
    with pytest.raises(VaelabError, match="not finite"):
        run.decode(torch.zeros(2, run.model.latent_dim))


def test_fit_images_without_a_fitted_prior_is_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["sample", str(trained_run), "--out", str(out), "--fit-images", "500"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fitted-prior" in err
    assert not out.exists()


def test_a_semi_supervised_run_draws_its_classes(tmp_path, monkeypatch):
    # M2 decodes each fitted code with a class from its uniform prior, not always the first class
    out = tmp_path / "m2"
    assert main(["train", "--preset", "mnist-m2", "--set", "data.name=mnist-sample", "--set", "data.limit=600",
                 "--set", "model.hidden=32", "--set", "model.latent_dim=3", "--set", "train.epochs=1",
                 "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    classes_seen, decode = [], run.decode

    def recording(z, classes=None):
        classes_seen.append(classes)
        return decode(z, classes)

    monkeypatch.setattr(run, "decode", recording)
    images = sample_fitted(run, 200, seed=2, components=2, fit_images=300)
    assert images.shape == (200, 1, 28, 28) and torch.isfinite(images).all()
    classes = classes_seen[0]
    assert classes.shape == (200,) and set(classes.tolist()) == set(range(10))
    by_class = [images[classes == c].mean(0) for c in (0, 1)]
    assert not torch.equal(by_class[0], by_class[1])
