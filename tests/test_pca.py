"""The PCA transform against scikit-learn and against its own algebra, and inside a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import vaelab
from vaelab.config import Config
from vaelab import prepared_data as pipeline
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
    pca = fit_pca(images, 6, fit_images=400)  # the six strong directions: variances well apart
    assert_matches_sklearn(pca, as_float(images), 6)
    twelve = fit_pca(images, 12, fit_images=400)  # and the noise directions' variances
    reference = PCA(n_components=12, svd_solver="full").fit(as_float(images))
    np.testing.assert_allclose(twelve.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-5)


def test_fewer_images_than_pixels_still_fits_exactly():
    images = structured_images(60, shape=(3, 10, 10))  # 60 images of 300 dims
    pca = fit_pca(images, 20, fit_images=60)
    reference = PCA(n_components=20, svd_solver="full").fit(as_float(images))
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-5)


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


def assert_matches_sklearn(pca: PCATransform, flat: np.ndarray, k: int, rtol: float = 1e-5) -> None:
    """Variances to ``rtol``, components up to sign, and the projection / inverse round trip,
    against scikit-learn's full-SVD PCA of the same float64 pixels."""
    reference = PCA(n_components=k, svd_solver="full").fit(flat)
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, rtol=rtol)
    np.testing.assert_allclose(pca.mean, reference.mean_, atol=1e-6)
    overlap = np.abs(pca.components.double().numpy() @ reference.components_.T)  # signs may flip
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-4)
    signs = np.sign(np.diag(pca.components.double().numpy() @ reference.components_.T))
    x = torch.from_numpy(np.round(flat * 255).astype(np.uint8).reshape(len(flat), *pca.image_shape))
    np.testing.assert_allclose(pca(x).double().numpy() * signs, reference.transform(flat), atol=2e-4)
    np.testing.assert_allclose(pca.inverse(pca(x)).double().numpy(),
                               reference.inverse_transform(reference.transform(flat)), atol=2e-4)


def test_fit_in_chunks_uses_every_image_and_matches_sklearn():
    images = structured_images(650)
    chunked = fit_pca(images, 6, fit_images=0, chunk=100)  # 6 full chunks and a remainder of 50
    # every image counted: the mean is the data's (a dropped remainder would shift it)
    np.testing.assert_allclose(chunked.mean, as_float(images).mean(0), atol=1e-6)
    assert_matches_sklearn(chunked, as_float(images), 6)
    whole = fit_pca(images, 6, fit_images=0, chunk=10_000)
    np.testing.assert_allclose(chunked.explained_variance_ratio, whole.explained_variance_ratio, rtol=1e-5)
    np.testing.assert_allclose(chunked.components, whole.components, atol=1e-5)  # same signs too


def test_random_data_with_separated_variances_matches_sklearn():
    rng = np.random.default_rng(3)
    dims, k = 48, 10
    basis = np.linalg.qr(rng.normal(size=(dims, dims)))[0]
    scores = rng.normal(size=(3000, dims)) * np.geomspace(30, 1, dims)  # eigenvalues well apart
    images = np.clip(120 + scores @ basis.T, 0, 255).astype(np.uint8).reshape(-1, 3, 4, 4)
    assert_matches_sklearn(fit_pca(images, k, fit_images=0, chunk=256), as_float(images), k)


def test_bright_images_with_little_variance_lose_no_digits():
    # pixel values near 250 varying by a few levels: summing raw squares in float32 would
    # cancel most digits; the provisional shift keeps the small variances exact
    rng = np.random.default_rng(4)
    images = (247 + rng.integers(0, 8, size=(2000, 1, 6, 6)) * (rng.random((2000, 1, 1, 1)) < 0.9)).astype(np.uint8)
    pca = fit_pca(images, 8, fit_images=0, chunk=300)
    reference = PCA(n_components=8, svd_solver="full").fit(as_float(images))
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-5)


def test_sign_convention_is_deterministic_and_the_largest_entry_positive():
    images = structured_images(300)
    pca = fit_pca(images, 6, fit_images=0, chunk=64)
    comps = pca.components.numpy()
    assert (comps[np.arange(6), np.abs(comps).argmax(1)] > 0).all()
    again = fit_pca(images[::-1].copy(), 6, fit_images=0, chunk=50)  # other order, other chunks
    np.testing.assert_allclose(again.components, comps, atol=1e-5)


def test_fit_reads_a_memory_map_in_order_without_loading_it(tmp_path):
    images = structured_images(500)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    reads = []

    class Recorder:  # the reads fit_pca makes, as (start, stop) of the memory map
        shape = mapped.shape

        def __len__(self):
            return len(mapped)

        def __getitem__(self, key):
            reads.append((key.start, key.stop))
            return mapped[key]

    pca = fit_pca(Recorder(), 6, fit_images=0, chunk=128)
    assert reads == [(0, 128), (128, 256), (256, 384), (384, 512)]  # sequential, one chunk each
    np.testing.assert_allclose(pca.components, fit_pca(images, 6, fit_images=0).components, atol=1e-5)


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
        fit_pca(images[:8], 12, fit_images=0)  # every image: all 8


def test_real_colour_images(shared_data):
    """CIFAR-10 JPEGs (the stand-in for SVHN's 32x32 colour digits), against scikit-learn."""
    from vaelab.data.folder import load_images

    root = shared_data / "cifar10" / "train"
    files = [path for folder in sorted(root.iterdir()) for path in sorted(folder.iterdir())[:100]]
    images = load_images(files)
    assert images.shape == (1000, 3, 32, 32)
    # 16x16 centre crops, 768 dimensions: a 3072 x 3072 eigendecomposition takes seconds on two cores
    images = np.ascontiguousarray(images[np.random.default_rng(0).permutation(len(images)), :, 8:24, 8:24])
    fit, held_out = images[:900], images[900:]
    pca = fit_pca(fit, 300, fit_images=0, chunk=256)
    assert_matches_sklearn(pca, as_float(fit), 300)
    quality = pca.quality(held_out)
    assert 0.9 < quality["pca_explained_variance"] < 1
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
