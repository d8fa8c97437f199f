"""The "PCA trick": train the VAE on principal components, show images via the inverse.

Fitted with scikit-learn: exactly (an eigendecomposition of the covariance, or a full
SVD when there are fewer images than pixels) on a shuffled subset, as Kingma did with
10,000 SVHN images; or with IncrementalPCA over the whole set, a chunk at a time, when it
does not fit in memory. Projection and inverse run in torch so they stay on the training
device. Every image shown goes back through :meth:`PCATransform.to_images`, which clips
to the valid range [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import VaelabError
from .transforms import Transform

#: whitening divides by sqrt(variance); components with (numerically) no variance are
#: divided by this instead, so a degenerate direction cannot blow a value up to inf
MIN_WHITEN_SCALE = 1e-6


class PCATransform(Transform):
    name = "pca"
    pixel_log_jacobian = None  # a density over components is not one over pixels

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor,
                 image_shape: tuple[int, ...], explained_variance_ratio: torch.Tensor):
        self.mean = mean.float()  # (D,) pixel means in [0, 1]
        self.components = components.float()  # (K, D), orthonormal rows
        self.scale = scale.float()  # (K,) 1, or sqrt(explained variance) when whitened
        self.image_shape = tuple(int(v) for v in image_shape)
        self.explained_variance_ratio = explained_variance_ratio.float()

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def whitened(self) -> bool:
        return bool((self.scale != 1).any())

    def to(self, device) -> "PCATransform":
        for name in ("mean", "components", "scale"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def event_shape(self, image_shape):
        return (self.n_components,)

    def __call__(self, images, generator=None):
        """uint8 images (B, C, H, W) -> component scores (B, K)."""
        flat = images.flatten(1).float().div_(255.0) - self.mean
        return (flat @ self.components.T) / self.scale

    def fixed(self, images, seed=0):
        return self(images)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Component scores (B, K) -> flat pixel values (B, D), not clipped."""
        return (x * self.scale) @ self.components + self.mean

    def to_images(self, x):
        """Component scores -> images in [0, 1]: the inverse, clipped (it can overshoot)."""
        return self.inverse(x).clamp_(0.0, 1.0).view(x.shape[0], *self.image_shape)

    def state(self):
        return {"pca.mean": self.mean.cpu(), "pca.components": self.components.cpu(),
                "pca.scale": self.scale.cpu(),
                "pca.explained_variance_ratio": self.explained_variance_ratio.cpu(),
                "pca.image_shape": torch.tensor(self.image_shape)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "PCATransform":
        return cls(state["pca.mean"], state["pca.components"], state["pca.scale"],
                   tuple(int(v) for v in state["pca.image_shape"]),
                   state["pca.explained_variance_ratio"])

    @torch.no_grad()
    def quality(self, images: np.ndarray, limit: int = 5000, batch: int = 1000) -> dict[str, float]:
        """What the components throw away, on up to ``limit`` uint8 images.

        The explained variance is the fit's (share of the fit images' total variance the
        kept components hold); the error and PSNR (peak 1.0) compare each image with its
        clipped reconstruction, i.e. with what the tool shows.
        """
        images = images[:limit]
        squared, count = 0.0, 0
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).to(self.mean.device)
            back = self.to_images(self(x))
            squared += float(((back - x.float() / 255.0) ** 2).double().sum())
            count += back.numel()
        mse = squared / max(count, 1)
        return {"pca_components": self.n_components,
                "pca_explained_variance": float(self.explained_variance_ratio.sum()),
                "pca_recon_mse": mse,
                "pca_recon_psnr_db": 10 * math.log10(1.0 / max(mse, 1e-12))}


def fit_pca(images: np.ndarray, n_components: int, fit_images: int = 10000, whiten: bool = False,
            seed: int = 0, chunk: int = 4096) -> PCATransform:
    """Fit a PCA on uint8 images (N, C, H, W), pixel values scaled to [0, 1].

    ``fit_images`` > 0: an exact fit on that many shuffled images (all of them if fewer).
    ``fit_images`` = 0: every image, with IncrementalPCA over shuffled chunks of ``chunk``
    images, so memory holds one chunk at a time. ``whiten`` scales each component to unit
    variance on the fit images.
    """
    n, *image_shape = images.shape
    dims = int(np.prod(image_shape))
    if n_components > dims:
        raise VaelabError(f"data.pca_components={n_components} exceeds the {dims} dimensions of one image")
    rng = np.random.default_rng(seed)
    if fit_images:
        pca = _fit_exact(images, n_components, fit_images, rng, seed)
    else:
        pca = _fit_incremental(images, n_components, rng, chunk)
    variance = pca.explained_variance_.astype(np.float32)
    scale = (torch.from_numpy(np.sqrt(variance)).clamp_(min=MIN_WHITEN_SCALE) if whiten
             else torch.ones(n_components))
    return PCATransform(torch.from_numpy(pca.mean_.astype(np.float32)),
                        torch.from_numpy(pca.components_.astype(np.float32)), scale, tuple(image_shape),
                        torch.from_numpy(pca.explained_variance_ratio_.astype(np.float32)))


def _as_float(images: np.ndarray) -> np.ndarray:
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)


def _fit_exact(images, n_components, fit_images, rng, seed):
    from sklearn.decomposition import PCA

    n = images.shape[0]
    if fit_images < n:
        subset = images[np.sort(rng.choice(n, size=fit_images, replace=False))]
    else:
        subset = images
    if subset.shape[0] < n_components:
        raise VaelabError(f"data.pca_components={n_components} needs at least that many images to fit on; "
                          f"got {subset.shape[0]} (lower data.pca_components or raise data.pca_fit_images)")
    flat = _as_float(subset)
    # Exact solvers, not the randomized SVD: measured on 10,000 CIFAR images with 1000
    # components the randomized one got the smallest kept variances 6% wrong, and took
    # twice as long as the covariance eigendecomposition.
    solver = "covariance_eigh" if flat.shape[0] >= flat.shape[1] and _has_covariance_eigh() else "full"
    return PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit(flat)


def _fit_incremental(images, n_components, rng, chunk):
    from sklearn.decomposition import IncrementalPCA

    n = images.shape[0]
    if n < n_components:
        raise VaelabError(f"data.pca_components={n_components} needs at least that many images to fit on; "
                          f"got {n}")
    step = max(chunk, n_components)
    # n // step parts of a shuffled order: every part holds at least `step` >= n_components
    # images (IncrementalPCA needs that many per call), and no image is left out
    pca = IncrementalPCA(n_components=n_components)
    for part in np.array_split(rng.permutation(n), max(1, n // step)):
        pca.partial_fit(_as_float(images[np.sort(part)]))  # sorted: sequential reads of a memmap
    return pca


def _has_covariance_eigh() -> bool:
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return (major, minor) >= (1, 5)
