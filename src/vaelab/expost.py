"""Samples from a distribution fitted to the codes, not from the model's prior.

Ex-post density estimation (Ghosh et al. 2020, "From Variational to Deterministic
Autoencoders"): fit a Gaussian mixture with full covariances to the posterior means of the
run's training images, then decode draws from it. Where the prior treats the latent units
as independent (an N(0, I) prior over a spatial latent map), the fitted covariances carry
the dependence between units that the encoder uses (sky above ground, an object in the
middle), and the samples show it.

The fitted mixture is not part of the model: the likelihoods and bits/dim that `vaelab eval`
reports are those of the prior the model was trained with.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import VaelabError
from .rundir.load import Run

#: ceilings on what a user can mean: a mixture with more components than this, or a fit on
#: more images, costs minutes for no visible gain
MAX_COMPONENTS = 100
MAX_FIT_IMAGES = 100_000


def check_fit_settings(components: int, fit_images: int) -> None:
    if not 1 <= components <= MAX_COMPONENTS:
        raise VaelabError(f"the fitted mixture's components must be from 1 to {MAX_COMPONENTS}, got {components}")
    if not 2 <= fit_images <= MAX_FIT_IMAGES:
        raise VaelabError(f"the images to fit on must be from 2 to {MAX_FIT_IMAGES:,}, got {fit_images:,}")


def fit_code_mixture(run: Run, components: int = 10, fit_images: int = 10_000, seed: int = 0):
    """A scikit-learn GaussianMixture (full covariances) fitted to the posterior means of up
    to ``fit_images`` of the run's training images (the held-out ones excluded), chosen at
    random with ``seed``."""
    from sklearn.mixture import GaussianMixture

    check_fit_settings(components, fit_images)
    images, rows = run.training_rows()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(rows, size=min(fit_images, len(rows)), replace=False))
    if len(chosen) < 2 * components:
        raise VaelabError(f"{len(chosen)} training images are too few to fit {components} components: "
                          f"use fewer (at most {len(chosen) // 2})"
                          + (f", or more images (--fit-images {2 * components})" if len(rows) >= 2 * components else ""))
    codes, _ = run.encode(images[torch.from_numpy(chosen)])
    codes = codes.double().numpy()
    if not np.isfinite(codes).all():
        raise VaelabError(f"the posterior means of {run.path} are not finite: its weights overflow; "
                          f"use an earlier checkpoint, or retrain")
    # a collapsed encoder maps many images to one code: a mixture needs a distinct code per component
    distinct = len(np.unique(codes.astype(np.float32), axis=0))
    if distinct < components:
        raise VaelabError(f"the {len(codes):,} codes of {run.path} take only {distinct} distinct values, too few for "
                          f"{components} components (the encoder has collapsed): use at most {distinct}")
    # reg_covar keeps every covariance invertible where some units carry no information
    # (inactive units have posterior means near 0 for every image)
    try:
        return GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(codes)
    except ValueError as error:
        raise VaelabError(f"could not fit {components} components to the codes of {run.path} ({error}); "
                          f"use fewer components") from None


def draw_codes(mixture, n: int, seed: int = 0) -> np.ndarray:
    """n draws from a fitted GaussianMixture, in random order (its sample() groups them by component)."""
    z, _ = mixture.sample(n)
    return z[np.random.default_rng(seed).permutation(n)]


def sample_fitted(run: Run, n: int, seed: int = 0, components: int = 10, fit_images: int = 10_000) -> torch.Tensor:
    """n images decoded from draws of the mixture fitted to the codes, float in [0, 1]; for a
    semi-supervised model, each with a class drawn from its prior p(y) (uniform)."""
    mixture = fit_code_mixture(run, components, fit_images, seed)
    z = torch.as_tensor(draw_codes(mixture, n, seed), dtype=torch.float32)
    n_classes = getattr(run.model, "n_classes", 0)
    classes = None
    if n_classes:
        classes = torch.randint(n_classes, (n,), generator=torch.Generator().manual_seed(seed))
    return run.decode(z, classes)
