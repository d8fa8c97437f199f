"""The "PCA trick": train the VAE on principal components, show images via the inverse.

Fitted exactly, always the same way: the pixel covariance is summed a chunk of images at
a time (float64 sums), then eigendecomposed. On a shuffled subset, as Kingma did with
10,000 SVHN images, or on every image; memory is one chunk plus a D x D matrix either way,
so a split bigger than memory is fitted straight from its memory-mapped store. It replaced
scikit-learn's IncrementalPCA, which took 322 s for 73,257 x 3072 images to 1000
components where this takes 37 s on one thread, and is exact. Projection and inverse run
in torch so they stay on the training device. Every image shown goes back through
:meth:`PCATransform.to_images`, which clips to the valid range [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import VaelabError
from .rundir.validate import bounded
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

    def fixed(self, images):
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
        """The fitted PCA saved beside a run's weights, checked: a file is input like any other."""
        names = ("pca.mean", "pca.components", "pca.scale", "pca.explained_variance_ratio", "pca.image_shape")
        missing = [n for n in names if n not in state]
        if missing:
            raise VaelabError(f"the saved PCA lacks {', '.join(missing)}: the weights file is damaged; retrain")
        mean, components, scale, ratio, shape = (state[n] for n in names)
        floats = (mean, components, scale, ratio)
        d = mean.shape[0] if mean.dim() == 1 else -1
        k = components.shape[0] if components.dim() == 2 else -1
        ok = (all(t.dtype == torch.float32 and bounded(t) for t in floats)
              and shape.dtype == torch.int64 and shape.dim() == 1
              and 1 <= len(shape) <= 4 and bool((shape >= 1).all()) and int(shape.double().prod()) == d
              and d >= 1 and k >= 1 and components.shape == (k, d) and scale.shape == (k,) and ratio.shape == (k,)
              and bool((scale > 0).all()))
        if not ok:
            raise VaelabError("the saved PCA's tensors do not fit together (shapes, dtypes or non-finite values): "
                              "the weights file is damaged; retrain")
        return cls(mean, components, scale, tuple(int(v) for v in shape), ratio)

    @torch.no_grad()
    def quality(self, images, limit: int = 5000, batch: int = 1000) -> dict[str, float]:
        """What the components throw away, on up to ``limit`` uint8 images (any array-like).

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


def fit_pca(images, n_components: int, fit_images: int = 10000, whiten: bool = False,
            seed: int = 0, chunk: int = 1024) -> PCATransform:
    """Fit a PCA on uint8 images (N, C, H, W), pixel values scaled to [0, 1].

    ``images`` is anything indexed like a uint8 array: an ndarray, a read-only memory map,
    a torch tensor, or :class:`vaelab.data.store.MappedImages`. ``fit_images`` > 0: that
    many shuffled images (all of them if fewer); 0: every image. Either way the fit is
    exact: the covariance is summed over ``chunk`` images at a time, in order (a memory map
    is read sequentially), then eigendecomposed, so memory holds one chunk and a D x D
    matrix whatever N. ``whiten`` scales each component to unit variance on the fit images.
    """
    n, *image_shape = images.shape
    dims = int(np.prod(image_shape))
    if n_components > dims:
        raise VaelabError(f"data.pca_components={n_components} exceeds the {dims} dimensions of one image")
    rows = None  # every image, in order
    if fit_images and fit_images < n:  # a shuffled subset, read in sorted order
        rows = np.sort(np.random.default_rng(seed).choice(n, size=fit_images, replace=False))
    count = n if rows is None else len(rows)
    if count < n_components:
        raise VaelabError(f"data.pca_components={n_components} needs at least that many images to fit on; "
                          f"got {count} (lower data.pca_components or raise data.pca_fit_images)")
    from threadpoolctl import threadpool_limits

    # the BLAS under numpy and scipy uses as many threads as torch (train.threads, --threads)
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        mean, covariance = streamed_covariance(images, rows, chunk)
        variance, components = top_eigenvectors(covariance, n_components)
    total = float(np.trace(covariance))
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    scale = (torch.from_numpy(np.sqrt(variance).astype(np.float32)).clamp_(min=MIN_WHITEN_SCALE) if whiten
             else torch.ones(n_components))
    return PCATransform(torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(components.astype(np.float32)),
                        scale, tuple(image_shape), torch.from_numpy(ratio.astype(np.float32)))


def streamed_covariance(images, rows: np.ndarray | None, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D; n - 1 denominator) of pixels in [0, 1], float64.

    Reads ``images[rows]`` (all images when ``rows`` is None) ``chunk`` images at a time.
    Each chunk is centred on a provisional mean, the first chunk's rounded to a whole
    pixel level, so the values multiplied are small whole numbers: float32 holds them
    exactly, and the float32 sums of products (BLAS at full speed) too while they stay below
    2**24; near-binary pixels can pass that within a chunk, and then round at about 1e-7
    relative, far below what the components need. The sums across chunks are
    float64, and the final subtraction of the mean's outer product cancels no digits.
    Measured on CIFAR crops: variances to 1e-11 of a float64 SVD, where pixels scaled to
    [0, 1] in float32 got the smallest kept ones 1e-3 wrong.
    """
    n = len(images) if rows is None else len(rows)
    shift = total = cross = None
    for start in range(0, n, chunk):
        block = images[start:start + chunk] if rows is None else images[rows[start:start + chunk]]
        x = np.asarray(block).reshape(len(block), -1).astype(np.float32)
        if shift is None:
            shift = np.round(x.mean(0))
            total = np.zeros(x.shape[1])
            cross = np.zeros((x.shape[1], x.shape[1]))
        x -= shift
        total += x.sum(0, dtype=np.float64)
        cross += x.T @ x  # numpy runs A.T @ A as a symmetric rank-k update: half a general product's work
    offset = total / n  # the mean, relative to the shift
    covariance = (cross - n * np.outer(offset, offset)) / (max(n - 1, 1) * 255.0 ** 2)
    return (shift + offset) / 255.0, covariance


def top_eigenvectors(covariance: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending, negatives from rounding set to 0) and their
    eigenvectors as rows, each signed so its largest-magnitude entry is positive."""
    import scipy.linalg

    dims = covariance.shape[0]
    values, vectors = scipy.linalg.eigh(covariance, subset_by_index=[dims - k, dims - 1])
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1].T
    biggest = np.abs(vectors).argmax(1)
    vectors *= np.sign(vectors[np.arange(k), biggest])[:, None]
    return values, np.ascontiguousarray(vectors)
