"""The "PCA trick": train the VAE on principal components, show images via the inverse.

Fitted with scikit-learn (randomized SVD on a shuffled subset, as Kingma did with 10,000
SVHN images; or IncrementalPCA over the whole set in chunks when it does not fit in
memory). Projection and inverse run in torch so they stay on the training device.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import VaelabError
from .transforms import Transform


class PCATransform(Transform):
    name = "pca"
    pixel_log_jacobian = None  # a density over components is not one over pixels

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor,
                 image_shape: tuple[int, ...], explained_variance_ratio: torch.Tensor):
        self.mean = mean.float()  # (D,)
        self.components = components.float()  # (K, D), orthonormal rows
        self.scale = scale.float()  # (K,) 1, or sqrt(explained variance) when whitened
        self.image_shape = tuple(image_shape)
        self.explained_variance_ratio = explained_variance_ratio.float()

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def to(self, device) -> "PCATransform":
        for name in ("mean", "components", "scale"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def event_shape(self, image_shape):
        return (self.n_components,)

    def __call__(self, images, generator=None):
        flat = images.flatten(1).float().div_(255.0) - self.mean
        return (flat @ self.components.T) / self.scale

    def fixed(self, images, seed=0):
        return self(images)

    def to_images(self, x):
        flat = (x * self.scale) @ self.components + self.mean
        return flat.clamp_(0.0, 1.0).view(x.shape[0], *self.image_shape)

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

    def quality(self, images: np.ndarray) -> dict[str, float]:
        """What the components throw away on these uint8 images: explained variance and PSNR."""
        x = torch.from_numpy(images[:5000])
        back = self.to_images(self(x))
        mse = float(((back - x.float() / 255.0) ** 2).mean())
        return {"pca_components": self.n_components,
                "pca_explained_variance": float(self.explained_variance_ratio.sum()),
                "pca_recon_mse": mse,
                "pca_recon_psnr_db": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def fit_pca(images: np.ndarray, n_components: int, fit_images: int = 10000, whiten: bool = False,
            seed: int = 0, chunk: int = 4096) -> PCATransform:
    """Fit on ``fit_images`` shuffled images (0: all of them, incrementally in chunks)."""
    n, *image_shape = images.shape
    dims = int(np.prod(image_shape))
    if n_components > dims:
        raise VaelabError(f"data.pca_components={n_components} exceeds the {dims} dimensions of one image")
    from sklearn.decomposition import PCA, IncrementalPCA

    rng = np.random.default_rng(seed)
    if fit_images and fit_images < n:
        pick = np.sort(rng.choice(n, size=fit_images, replace=False))
    else:
        pick = None
    if pick is not None or n <= 20000:
        subset = images if pick is None else images[pick]
        if subset.shape[0] < n_components:
            raise VaelabError(f"data.pca_components={n_components} needs at least that many images to fit on; "
                              f"got {subset.shape[0]} (raise data.pca_fit_images)")
        flat = subset.reshape(subset.shape[0], -1).astype(np.float32) / 255.0
        pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(flat)
    else:  # the whole set, a chunk at a time, so memory stays at one chunk
        pca = IncrementalPCA(n_components=n_components, batch_size=max(chunk, n_components))
        order = rng.permutation(n)
        step = max(chunk, n_components)
        for start in range(0, n - n_components + 1, step):
            rows = np.sort(order[start:start + step])
            if len(rows) < n_components:
                break
            pca.partial_fit(images[rows].reshape(len(rows), -1).astype(np.float32) / 255.0)
    components = torch.from_numpy(pca.components_.astype(np.float32))
    scale = (torch.from_numpy(np.sqrt(pca.explained_variance_).astype(np.float32)) if whiten
             else torch.ones(n_components))
    return PCATransform(torch.from_numpy(pca.mean_.astype(np.float32)), components, scale,
                        tuple(image_shape), torch.from_numpy(pca.explained_variance_ratio_.astype(np.float32)))
