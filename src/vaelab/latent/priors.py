"""Priors p(z) over latent codes, as modules a VAE owns.

- ``StandardNormal``: N(0, I), the usual prior, with an analytic KL to q(z|x).
- ``MixtureOfGaussians``: a learned mixture of diagonal Gaussians.
- ``VampPrior``: Tomczak & Welling 2018, "VAE with a VampPrior": p(z) = 1/K sum_k q(z|u_k),
  the encoder's own posterior at K learned pseudo-inputs u_k.

Every log-density is in nats, summed over latent dims. The mixtures have no closed-form
KL to q(z|x): callers use the one-sample estimate log q(z|x) - log p(z) (``analytic_kl``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import VaelabError
from .gaussian import LOG_2PI, Posterior, standard_normal_log_prob


def mixture_log_prob(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor,
                     log_weights: torch.Tensor) -> torch.Tensor:
    """log sum_k w_k N(z; mean_k, diag(var_k)) for z of shape (..., L) and K components.

    The squares (z - mean_k)^2 / var_k are expanded into two matrix products, so memory and
    time go as (..., K) rather than (..., K, L) (a broadcast made a 500-component prior
    cost more than the networks); float64 keeps the expansion's cancellation harmless.
    """
    zd, md = z.double(), means.double()
    precision = torch.exp(-logvars.double())  # (K, L)
    squares = (zd * zd) @ precision.T - 2.0 * (zd @ (md * precision).T) + (md * md * precision).sum(-1)
    per_component = -0.5 * (squares + logvars.double().sum(-1) + means.shape[-1] * LOG_2PI)  # (..., K)
    return torch.logsumexp(per_component + log_weights.double(), dim=-1).to(z.dtype)


def sample_mixture(n: int, means: torch.Tensor, logvars: torch.Tensor, log_weights: torch.Tensor,
                   generator: torch.Generator | None, device) -> torch.Tensor:
    """n draws from a diagonal-Gaussian mixture: a component k ~ w, then z ~ N(mean_k, var_k)."""
    # Draw on the generator's device, so a CPU generator seeds a model on any device.
    draw_device = generator.device if generator is not None else means.device
    probs = torch.softmax(log_weights.detach(), dim=-1).to(draw_device, torch.float64)
    k = torch.multinomial(probs, n, replacement=True, generator=generator)
    eps = torch.randn((n, means.shape[-1]), generator=generator, device=draw_device, dtype=means.dtype)
    k, eps = k.to(means.device), eps.to(means.device)
    z = means[k] + torch.exp(0.5 * logvars[k]) * eps
    return z if device is None else z.to(device)


class Prior(nn.Module):
    """p(z) over a latent_dim-dimensional code."""

    name: str = ""
    analytic_kl: bool = False
    learned: bool = True  # its density is trained: figures draw from it rather than from N(0, I)

    def __init__(self, latent_dim: int):
        super().__init__()
        if latent_dim < 1:
            raise VaelabError(f"latent_dim must be at least 1, got {latent_dim}")
        self.latent_dim = int(latent_dim)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in nats for z of shape (..., L); returns (...)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n codes drawn from p(z), (n, L)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def held(self) -> Iterator["Prior"]:
        """Within this block the prior's parameters are taken as constant (no gradient), so a
        prior that derives its density from other networks may compute it once."""
        yield self

    def kl(self, q: Posterior) -> torch.Tensor:
        """Analytic KL(q(z|x) || p(z)) per latent dimension, (B, L)."""
        raise NotImplementedError(
            f"the {self.name} prior has no analytic KL; estimate it as log q(z|x) - log p(z)")

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class StandardNormal(Prior):
    """N(0, I): no parameters, and a KL that is exact per dimension."""

    name = "standard-normal"
    analytic_kl = True
    learned = False

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        if device is None and generator is not None:
            device = generator.device
        return torch.randn((n, self.latent_dim), generator=generator, device=device)

    def kl(self, q: Posterior) -> torch.Tensor:
        return q.kl_per_dim()


class MixtureOfGaussians(Prior):
    """A learned mixture of n_components diagonal Gaussians."""

    name = "mog"
    analytic_kl = False

    def __init__(self, latent_dim: int, n_components: int = 500):
        super().__init__(latent_dim)
        if n_components < 1:
            raise VaelabError(f"n_components must be at least 1, got {n_components}")
        # Spread means so the components start distinct; equal weights and unit variances.
        self.means = nn.Parameter(torch.randn(n_components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(n_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(n_components))

    @property
    def n_components(self) -> int:
        return self.logits.shape[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(z, self.means, self.logvars, torch.log_softmax(self.logits, -1))

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return sample_mixture(n, self.means, self.logvars, self.logits, generator, device)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, n_components={self.n_components}"


class VampPrior(Prior):
    """p(z) = 1/K sum_k q(z|u_k) with learned pseudo-inputs u_k (Tomczak & Welling 2018).

    The encoder is the VAE's own: ``bind(encode)`` hands it over without making it a
    submodule, so the VAE alone owns (saves, moves, optimises once) its weights, and this
    prior's state_dict holds only ``pseudo_inputs``.
    """

    name = "vamp"
    analytic_kl = False

    def __init__(self, latent_dim: int, n_pseudo: int, event_shape, init_mean: float = 0.5,
                 init_std: float = 0.01):
        super().__init__(latent_dim)
        if n_pseudo < 1:
            raise VaelabError(f"n_pseudo must be at least 1, got {n_pseudo}")
        shape = (int(n_pseudo), *tuple(event_shape))
        self.pseudo_inputs = nn.Parameter(torch.randn(shape) * init_std + init_mean)
        self.__dict__["_encode"] = None  # kept out of nn.Module's registries on purpose
        self.__dict__["_held"] = None  # the components while ``held()``: see there

    def bind(self, encode: Callable[[torch.Tensor], Posterior]) -> "VampPrior":
        """Use ``encode`` (x -> Posterior) as q(z|x); returns self."""
        self.__dict__["_encode"] = encode
        return self

    @property
    def n_pseudo(self) -> int:
        return self.pseudo_inputs.shape[0]

    @contextlib.contextmanager
    def held(self) -> Iterator["VampPrior"]:
        """Encode the pseudo-inputs once for the whole block (an IW evaluation would otherwise
        re-encode them for every chunk of samples). Only without gradients: under autograd the
        components must stay part of the graph."""
        if torch.is_grad_enabled() or self.__dict__["_held"] is not None:
            yield self
            return
        self.__dict__["_held"] = self.components()
        try:
            yield self
        finally:
            self.__dict__["_held"] = None

    def components(self) -> Posterior:
        """q(z|u_k) for every pseudo-input, a Posterior of (K, L)."""
        if self.__dict__["_held"] is not None:
            return self.__dict__["_held"]
        encode = self.__dict__["_encode"]
        if encode is None:
            raise RuntimeError("VampPrior is not bound to an encoder: call bind(encode) first")
        # The paper maps pseudo-inputs into the data range with hardtanh to [0, 1].
        q = encode(nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0))
        if q.mean.shape != (self.n_pseudo, self.latent_dim):
            raise RuntimeError(f"the bound encoder gave codes of shape {tuple(q.mean.shape)}, "
                               f"expected ({self.n_pseudo}, {self.latent_dim})")
        return q

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        q = self.components()
        log_weights = torch.full((self.n_pseudo,), -math.log(self.n_pseudo),
                                 device=q.mean.device, dtype=q.mean.dtype)
        return mixture_log_prob(z, q.mean, q.logvar, log_weights)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        q = self.components()
        uniform = torch.zeros(self.n_pseudo, device=q.mean.device)
        return sample_mixture(n, q.mean, q.logvar, uniform, generator, device)

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, n_pseudo={self.n_pseudo}, "
                f"event_shape={tuple(self.pseudo_inputs.shape[1:])}")


@torch.no_grad()
def learned_prior_draws(model, n: int, seed: int) -> torch.Tensor | None:
    """n draws (CPU, float32) of ``model``'s learned prior from a generator of their own, the
    model in evaluation mode meanwhile (a VampPrior encodes its pseudo-inputs); None when its
    prior is N(0, I) or it has none. Figures and progress grids draw their codes here."""
    prior = getattr(model, "prior", None)
    if prior is None or not prior.learned:
        return None
    was_training = model.training
    model.eval()
    try:
        return prior.sample(n, generator=torch.Generator().manual_seed(seed), device="cpu").float()
    finally:
        model.train(was_training)


_CLASSES: dict[str, type[Prior]] = {
    "standard-normal": StandardNormal,
    "mog": MixtureOfGaussians,
    "vamp": VampPrior,
}
PRIORS = tuple(_CLASSES)


def build_prior(name: str, latent_dim: int, *, n_components: int = 500, event_shape=None) -> Prior:
    """The prior called ``name``; ``n_components`` sizes the mixtures (pseudo-inputs for vamp)."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise VaelabError(f"unknown prior {name!r}; choose one of {', '.join(PRIORS)}")
    if cls is VampPrior:
        if event_shape is None:
            raise VaelabError("the vamp prior needs the data's event_shape to size its pseudo-inputs")
        return VampPrior(latent_dim, n_components, event_shape)
    if cls is MixtureOfGaussians:
        return MixtureOfGaussians(latent_dim, n_components)
    return cls(latent_dim)
