"""Metrics of a trained model on a set of images, in nats per image (the units contract).

- elbo, recon, kl: the ELBO with one posterior sample per image, and its two parts
- nll_iw: -log p(x) estimated with K importance samples (Burda et al. 2016), streamed
- bits_per_dim: nll_iw / (D ln 2) over 8-bit pixels (see ``bits_per_dim``), else None
- active_units: latent dimensions whose posterior mean varies over x: Cov_x(E_q[z]) > 0.01
- recon_mse, mean_image_mse: squared error per pixel in image space [0, 1] of the
  reconstructions at the posterior mean, and of the images' mean image
"""

from __future__ import annotations

import math

import torch

from .model import VAE
from .transforms import Transform

ACTIVE_UNIT_THRESHOLD = 0.01


def active_dims(means: torch.Tensor) -> torch.Tensor:
    """Which latent dimensions are active: their posterior mean varies over the images,
    Cov_x(E_q[z]) > 0.01 (Burda et al. 2016), (L,) bool."""
    if len(means) < 2:
        return torch.zeros(means.shape[1], dtype=torch.bool, device=means.device)
    return means.var(0) > ACTIVE_UNIT_THRESHOLD


def active_units(means: torch.Tensor) -> int:
    """How many latent dimensions are active (active_dims)."""
    return int(active_dims(means).sum())


#: how evaluated images are binarized, said in eval's output (transforms.image_keyed_bernoulli)
BINARIZATION_RULE = ("each image binarized once, x ~ Bernoulli(u/255) drawn from a hash of its own pixels: the "
                     "same binary images for every --seed, batch size and command")
_MALLOC_TUNED = False


def _keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MB for reuse, once per process.

    The IW-NLL loop allocates and frees the same few chunk-sized tensors (<= 16 MB) for
    every chunk of samples; by default glibc hands them back to the kernel and every page
    is faulted in again next time (what that cost is in BENCHMARKS.md, section 3). Memory
    stays bounded by the chunk size; elsewhere (not glibc) this does nothing.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
            libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MB come from the heap
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: and are not returned to the kernel at once
    except OSError:
        pass


class ReconstructionError:
    """Mean squared error per pixel, in image space [0, 1], of reconstructions at the
    posterior mean against the stored images u / 255; beside it that of the best constant
    guess, the images' own mean image. A model that learned anything beats the latter
    clearly, whatever its likelihood or transform (binarized, PCA: compared as images)."""

    def __init__(self):
        self.n = 0
        self.recon_sq = 0.0
        self.sum = self.sum_sq = None

    @torch.no_grad()
    def add(self, model: VAE, transform: Transform, params_at_mean: torch.Tensor, images: torch.Tensor) -> None:
        target = images.to(params_at_mean.device).double().div(255.0).flatten(1)
        recon = transform.to_images(model.likelihood.mean(params_at_mean)).double().flatten(1)
        self.recon_sq += float((recon - target).pow(2).mean(1).sum())
        batch_sum, batch_sq = target.sum(0), target.pow(2).sum(0)
        self.sum = batch_sum if self.sum is None else self.sum + batch_sum
        self.sum_sq = batch_sq if self.sum_sq is None else self.sum_sq + batch_sq
        self.n += len(target)

    def result(self) -> dict:
        if self.n == 0:
            return {"recon_mse": None, "mean_image_mse": None}
        mean = self.sum / self.n
        return {"recon_mse": self.recon_sq / self.n,
                "mean_image_mse": float((self.sum_sq / self.n - mean.pow(2)).clamp(min=0).mean())}


def data_space(model: VAE, transform: Transform) -> str:
    """The space a run's nats are measured in: nats compare only between runs in the same one."""
    if transform.name == "pca":
        return "PCA components (whitened)" if transform.whitened else "PCA components (not whitened)"
    if transform.name.startswith("binarize"):
        return "binary pixels"
    if transform.name == "m1":
        return f"{transform.describe()} (a density)"
    if model.likelihood.discrete_8bit:
        return "8-bit pixels"
    if model.likelihood.binary:
        return "grey levels under a Bernoulli cross-entropy (not a normalized likelihood)"
    return "continuous pixels in [0, 1] (a density)"


def bits_per_dim(nll: float, model: VAE, transform: Transform, image_shape: tuple[int, ...]) -> float | None:
    """Bits per 8-bit pixel dimension from -log P(u) in nats, or None where the model gives
    no pmf over the 256 levels of each pixel.

    A discretized likelihood is one: nll / (D ln 2). A Gaussian on x = u/255 is measured by
    its exact mass on each pixel's bin (``eight_bit_log_prob``): pass that nll. Other
    continuous densities are not turned into a code length: the density at the grid points
    is none (a variance that shrinks on constant pixels makes it unbounded). Binarized data
    and PCA components are not 8-bit pixels (their nats still compare among themselves).
    """
    if eight_bit_log_prob(model, transform) is None and not model.likelihood.discrete_8bit:
        return None
    return nll / (math.prod(image_shape) * math.log(2))


def eight_bit_log_prob(model: VAE, transform: Transform):
    """The function giving log P(u | z) of 8-bit pixels for a continuous decoder on u/255,
    when vaelab has one (a Gaussian's bin mass), else None."""
    lik = model.likelihood
    if transform.pixel_log_jacobian is None or lik.binary or lik.discrete_8bit:
        return None
    return getattr(lik, "log_prob_8bit", None)


#: what bits_per_dim measures, said beside it in eval's output
BITS_PER_DIM_METHOD = {
    "discrete": "-log P(u) of the model's own pmf over the 256 levels, importance-weighted",
    "bin-mass": "-log P(u) with each pixel's probability the Gaussian's exact mass on its 8-bit bin "
                "(CDF differences, the edge bins taking the tails), importance-weighted",
}


class ElboPass:
    """One pass over uint8 images in batches: the ELBO, its parts and the KL per latent
    dimension (one posterior sample each), the posterior means and standard deviations,
    and the reconstruction error at the posterior mean. Validation during training,
    `vaelab eval` and the report all measure through here."""

    def __init__(self, model: VAE, transform: Transform, generator: torch.Generator):
        self.model, self.transform, self.generator = model, transform, generator
        self.totals = {"elbo": 0.0, "recon": 0.0, "kl": 0.0}
        self.kl_per_dim = None
        self.means, self.stds = [], []
        self.errors = ReconstructionError()
        self.n = 0

    @torch.no_grad()
    def add(self, images: torch.Tensor) -> torch.Tensor:
        """Measure a batch of uint8 images (on the model's device); returns the model's input x."""
        x = self.transform.fixed(images)
        terms = self.model.elbo_terms(x, generator=self.generator, at_mean=True)
        for key in self.totals:
            self.totals[key] += float(terms[key].double().sum())
        kl = terms["kl_per_dim"].double().sum(0)
        self.kl_per_dim = kl if self.kl_per_dim is None else self.kl_per_dim + kl
        self.means.append(terms["means"])
        self.stds.append(terms["stds"])
        self.errors.add(self.model, self.transform, terms["params_at_mean"], images)
        self.n += len(images)
        return x

    def result(self) -> dict:
        """elbo, recon, kl (nats per image), kl_per_dim (list), active_units, recon_mse, mean_image_mse."""
        n = max(self.n, 1)
        result = {k: v / n for k, v in self.totals.items()}
        result["kl_per_dim"] = (self.kl_per_dim / n).tolist() if self.kl_per_dim is not None else []
        result["active_units"] = active_units(torch.cat(self.means).double()) if self.means else 0
        layers = getattr(self.model, "latent_dims", None)
        if layers and len(layers) > 1 and self.means:  # a hierarchy: per layer too, bottom first
            active = active_dims(torch.cat(self.means).double())
            result["active_units_per_layer"] = [int(part.sum()) for part in active.split(layers)]
        result.update(self.errors.result())
        return result

    def posteriors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior means and standard deviations of every image measured, (N, L) each."""
        return torch.cat(self.means), torch.cat(self.stds)


def error_interval(errors: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of an error rate errors / n (95 % for z = 1.96)."""
    if n == 0:
        return (math.nan, math.nan)
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.no_grad()
def evaluate_model(model: VAE, transform: Transform, images: torch.Tensor, iw_samples: int = 100,
                   batch_size: int = 500, seed: int = 0, progress: bool = False,
                   labels: torch.Tensor | None = None) -> dict:
    """All metrics over uint8 ``images`` (N, C, H, W); deterministic for a given seed. With
    ``labels``, a model with a classifier (semi-supervised) is also scored on them."""
    model.eval()
    device = next(model.parameters()).device
    if device.type == "cpu":
        _keep_freed_memory()
    gen = torch.Generator(device=device).manual_seed(seed)
    measured = ElboPass(model, transform, gen)
    nll_iw = nll_8bit = 0.0
    wrong = scored = 0
    classifies = labels is not None and hasattr(model, "classify")
    pixel_pmf = eight_bit_log_prob(model, transform)
    batches = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"eval (K={iw_samples})", leave=False, disable=None)  # none off a terminal
    for start in batches:
        # read once (a memory-mapped store reads the disk)
        x = measured.add(images[start:start + batch_size].to(device))
        if classifies:
            target = torch.as_tensor(labels[start:start + batch_size]).to(device)
            known = target >= 0
            wrong += int((model.classify(x).argmax(-1) != target)[known].sum())
            scored += int(known.sum())
        if iw_samples > 0:
            nll_iw -= float(model.log_likelihood(x, iw_samples, generator=gen).double().sum())
        if pixel_pmf is not None:  # a code length for 8-bit pixels (K = 1: the ELBO's bound)
            nll_8bit -= float(model.log_likelihood(x, max(iw_samples, 1), generator=gen,
                                                   log_prob=pixel_pmf).double().sum())
    n = len(images)
    result = measured.result()
    del result["kl_per_dim"]
    result["nll_iw"] = nll_iw / n if iw_samples > 0 else None
    result["data_space"] = data_space(model, transform)
    result["kl_method"] = getattr(model, "kl_method", "analytic")
    if transform.name == "binarize-dynamic":
        result["binarization"] = BINARIZATION_RULE
    result["iw_samples"] = iw_samples
    result["n_images"] = n
    if classifies and scored:
        result["class_error"] = wrong / scored
        result["class_error_ci95"] = list(error_interval(wrong, scored))
    if pixel_pmf is not None:
        nll, method = nll_8bit / n, "bin-mass"
    else:
        nll, method = (result["nll_iw"] if result["nll_iw"] is not None else -result["elbo"]), "discrete"
    result["bits_per_dim"] = bits_per_dim(nll, model, transform, tuple(images.shape[1:]))
    if result["bits_per_dim"] is not None:
        result["bits_per_dim_method"] = BITS_PER_DIM_METHOD[method] + f" (K={max(iw_samples, 1)})"
    return result
