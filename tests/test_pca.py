"""The PCA transform against scikit-learn and against its own algebra, and inside a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import vaelab
from vaelab.config import Config
from vaelab import pipeline
from vaelab.errors import VaelabError
from vaelab.pca import PCATransform, fit_pca


@pytest.fixture(autouse=True)
def _one_thread():
    """Small problems on a shared 2-core machine: with one thread (torch and the BLAS under
    scikit-learn) they run several times faster, since no thread waits for another."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def structured_images(n: int, shape=(3, 8, 8), rank: int = 6, seed: int = 0) -> np.ndarray:
    """uint8 images near a rank-``rank`` subspace, with decaying strengths, plus noise."""
    rng = np.random.default_rng(seed)
    dims = int(np.prod(shape))
    basis = np.linalg.qr(rng.normal(size=(dims, rank)))[0].T  # (rank, D) orthonormal
    scores = rng.normal(size=(n, rank)) * np.geomspace(40, 5, rank)
    flat = 128 + scores @ basis * 8 + rng.normal(0, 6, size=(n, dims))
    return np.clip(flat, 0, 255).astype(np.uint8).reshape(n, *shape)


def as_float(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def test_explained_variance_and_components_match_sklearn():
    images = structured_images(400)
    pca = fit_pca(images, 12, fit_images=400)
    reference = PCA(n_components=12, svd_solver="full").fit(as_float(images))
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, rtol=2e-3)
    np.testing.assert_allclose(pca.mean, reference.mean_, atol=1e-6)
    overlap = np.abs(pca.components.double().numpy() @ reference.components_.T)  # signs may flip
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-3)


def test_fewer_images_than_pixels_still_fits_exactly():
    images = structured_images(60, shape=(3, 10, 10))  # 60 images of 300 dims
    pca = fit_pca(images, 20, fit_images=60)
    reference = PCA(n_components=20, svd_solver="full").fit(as_float(images))
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, rtol=2e-3)


def test_reconstruction_error_is_the_variance_the_dropped_components_hold():
    images = structured_images(500)
    n = len(images)
    flat = torch.from_numpy(as_float(images))
    total_variance = float(flat.var(0, unbiased=True).sum())
    for k in (2, 6, 30):
        pca = fit_pca(images, k, fit_images=n)
        back = pca.inverse(pca(torch.from_numpy(images))).double()
        error = float(((back - flat) ** 2).sum(1).mean())
        kept = float(pca.explained_variance_ratio.double().sum())
        # sum of the discarded eigenvalues of the covariance (ddof 1), times (n - 1) / n
        predicted = (n - 1) / n * total_variance * (1 - kept)
        assert error == pytest.approx(predicted, rel=2e-3)


def test_images_shown_are_clipped_to_the_valid_range():
    images = structured_images(200)
    pca = fit_pca(images, 5, fit_images=200)
    far = torch.randn(16, 5) * 50  # scores well outside the data: the inverse overshoots
    raw = pca.inverse(far)
    assert float(raw.min()) < 0 and float(raw.max()) > 1
    shown = pca.to_images(far)
    assert shown.shape == (16, 3, 8, 8)
    assert float(shown.min()) == 0.0 and float(shown.max()) == 1.0
    torch.testing.assert_close(shown.flatten(1), raw.clamp(0, 1))
    quality = pca.quality(images)
    back = pca.to_images(pca(torch.from_numpy(images)))
    mse = float(((back - torch.from_numpy(images).float() / 255) ** 2).mean())
    assert quality["pca_recon_mse"] == pytest.approx(mse, rel=1e-4)
    assert quality["pca_recon_psnr_db"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-4)
    assert quality["pca_explained_variance"] == pytest.approx(float(pca.explained_variance_ratio.sum()))


def test_whitening_gives_unit_variance_and_the_same_reconstructions():
    images = structured_images(300)
    plain = fit_pca(images, 8, fit_images=300)
    white = fit_pca(images, 8, fit_images=300, whiten=True)
    x = torch.from_numpy(images)
    scores = white(x).double()
    np.testing.assert_allclose(scores.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(scores.var(0, unbiased=True), 1, rtol=1e-3)
    torch.testing.assert_close(white.inverse(white(x)), plain.inverse(plain(x)), atol=1e-4, rtol=0)
    # more components than the data's rank: the empty directions stay finite
    flat_images = np.repeat(images[:40, :, :1, :1], 8, axis=2).repeat(8, axis=3)  # rank <= 3 images
    degenerate = fit_pca(flat_images, 10, fit_images=40, whiten=True)
    assert torch.isfinite(degenerate(torch.from_numpy(flat_images))).all()


def test_incremental_fit_uses_every_image_and_is_close_to_the_full_fit(monkeypatch):
    from sklearn.decomposition import IncrementalPCA

    images = structured_images(650)
    full = fit_pca(images, 60, fit_images=650)
    chunks = []
    partial_fit = IncrementalPCA.partial_fit
    monkeypatch.setattr(IncrementalPCA, "partial_fit",
                        lambda self, x, *a, **k: chunks.append(len(x)) or partial_fit(self, x, *a, **k))
    # chunks of 100: the 50 left over after six are fewer than the 60 components one call to
    # IncrementalPCA needs, so they must be merged into the others, not dropped
    incremental = fit_pca(images, 60, fit_images=0, chunk=100)
    assert sum(chunks) == 650 and min(chunks) >= 100
    # every image counted: the mean is the data's (a dropped remainder would shift it)
    np.testing.assert_allclose(incremental.mean, as_float(images).mean(0), atol=1e-6)
    # the six strong directions: the same variances and the same subspace
    np.testing.assert_allclose(incremental.explained_variance_ratio[:6], full.explained_variance_ratio[:6],
                               rtol=0.02)
    p_full = full.components[:6].T.double() @ full.components[:6].double()
    p_incremental = incremental.components[:6].T.double() @ incremental.components[:6].double()
    assert float(torch.linalg.matrix_norm(p_full - p_incremental, ord=2)) < 0.05  # the same subspace


def test_subset_fit_draws_shuffled_images():
    # the first half black, the second white: a shuffled subset has both, a prefix only black
    images = np.concatenate([np.zeros((100, 1, 4, 4), np.uint8), np.full((100, 1, 4, 4), 255, np.uint8)])
    pca = fit_pca(images, 2, fit_images=50)
    assert 0.2 < float(pca.mean.mean()) < 0.8


def test_bad_sizes_are_clear_errors():
    images = structured_images(30, shape=(1, 4, 4))
    with pytest.raises(VaelabError, match="exceeds the 16 dimensions"):
        fit_pca(images, 17)
    with pytest.raises(VaelabError, match="needs at least that many images"):
        fit_pca(images, 12, fit_images=10)
    with pytest.raises(VaelabError, match="needs at least that many images"):
        fit_pca(images[:8], 12, fit_images=0)  # incremental, over all 8


def test_real_colour_images(shared_data):
    """CIFAR-10 JPEGs (the stand-in for SVHN's 32x32 colour digits): 3072-dim images."""
    from vaelab.data.folder import load_images

    root = shared_data / "cifar10" / "train"
    # 32 images of each class (small: SVDs with 3072 columns are slow on two cores)
    files = [path for folder in sorted(root.iterdir()) for path in sorted(folder.iterdir())[:32]]
    images = load_images(files)
    assert images.shape == (320, 3, 32, 32)
    rng = np.random.default_rng(0)
    images = images[rng.permutation(len(images))]
    fit, held_out = images[:260], images[260:]
    pca = fit_pca(fit, 40, fit_images=260)
    reference = PCA(n_components=40, svd_solver="full").fit(as_float(fit))
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, rtol=5e-3)
    quality = pca.quality(held_out)
    assert 0.5 < quality["pca_explained_variance"] < 1
    assert quality["pca_recon_psnr_db"] > 10 * np.log10(1 / float(as_float(held_out).var()))  # beats the mean image


def test_pca_is_saved_in_the_run_and_reused_on_resume_and_load(tmp_path, monkeypatch):
    config = Config()
    config.apply_overrides(["data.name=mnist-sample", "data.limit=300", "data.transform=pca",
                            "data.pca_components=12", "data.pca_fit_images=200", "data.pca_whiten=true",
                            "model.hidden=32", "model.latent_dim=2", "model.likelihood=gaussian",
                            "model.variance=learned-logvar", "train.epochs=1", "train.batch_size=100"])
    out = vaelab.train(config, tmp_path / "run", progress=False)
    assert "PCA: pca_components=12" in (out / "train.log").read_text()
    assert json.loads((out / "model.json").read_text())["event_shape"] == [12]
    run = vaelab.load_run(out)
    assert isinstance(run.transform, PCATransform) and run.transform.whitened
    first = run.transform.components.clone()

    def refit(*args, **kwargs):
        raise AssertionError("the PCA was fitted again")

    monkeypatch.setattr(pipeline, "fit_pca", refit)
    config.set("train.epochs", 2)
    vaelab.train(config, out, resume=True, progress=False)
    run = vaelab.load_run(out)
    assert torch.equal(run.transform.components, first)
    # what the tool shows comes back through the inverse: images of the data's shape, in [0, 1]
    images, _ = run.images("test")
    for shown in (run.sample(5), run.reconstruct(images[:5])):
        assert shown.shape == (5, 1, 28, 28)
        assert 0.0 <= float(shown.min()) and float(shown.max()) <= 1.0
    result = run.evaluate("test", iw_samples=3, limit=50)
    assert result["bits_per_dim"] is None  # a density over components, not over pixels
