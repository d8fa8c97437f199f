"""The VAE: a diagonal-Gaussian encoder, a decoder into an observation model, and the bounds.

The prior is an object (latent/priors.py): N(0, I), a learned mixture of Gaussians, or the
VampPrior (Tomczak & Welling 2018); the posterior may be refined by inverse autoregressive
flow steps (latent/flows.py, Kingma et al. 2016). The KL is analytic where it exists
(N(0, I) without a flow, ``kl_method`` "analytic") and a one-sample Monte Carlo estimate
log q(z|x) - log p(z) otherwise ("monte-carlo"); then ``kl_per_dim`` is the base Gaussian's
KL per dimension against N(0, I), a per-unit information measure, not a part of the total.

Every quantity is in nats per example, summed over the example's dimensions (the units
contract); losses average those over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .latent.flows import IAF
from .latent.gaussian import Posterior
from .latent.priors import StandardNormal, VampPrior, build_prior
from .importance import chunk_size, log_mean_exp_streamed
from .likelihoods import likelihood_from_config
from .nn import build_decoder, build_encoder


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to minimise
    recon: torch.Tensor  # mean over the batch of -log p(x|z), nats/image
    kl: torch.Tensor  # mean over the batch of KL(q||p), nats/image (unweighted)
    kl_per_dim: torch.Tensor  # (L,) mean over the batch
    elbo: torch.Tensor  # mean over the batch of the ELBO (always beta = 1), nats/image
    kl_per_layer: torch.Tensor | None = None  # (n_layers,) for hierarchies, top layer last


def _prior_components(prior) -> int:
    """How many Gaussians a mixture prior's log-density spans per z (0 for N(0, I))."""
    return getattr(prior, "n_components", getattr(prior, "n_pseudo", 0))


def _full(t: torch.Tensor) -> torch.Tensor:
    """Under bf16/fp16 autocast the networks run in half precision; the distributions stay fp32."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class VAE(nn.Module):
    def __init__(self, config: ModelConfig, event_shape: tuple[int, ...]):
        super().__init__()
        self.config = config
        self.event_shape = tuple(event_shape)
        self.latent_dim = config.latent_dim
        self.likelihood = likelihood_from_config(config, self.event_shape)
        self.encoder = build_encoder(config, self.event_shape)
        # an encoder that ends in the posterior's own maps (resnet) needs no dense head
        self.posterior_head = (nn.Identity() if getattr(self.encoder, "gives_posterior", False)
                               else nn.Linear(self.encoder.out_features, 2 * config.latent_dim))
        self.decoder = build_decoder(config, self.event_shape, self.likelihood.n_params, self.likelihood.init_bias())
        self.prior = build_prior(config.prior, config.latent_dim, n_components=config.prior_components,
                                 event_shape=self.event_shape)
        if isinstance(self.prior, VampPrior):  # its components are the encoder's posteriors of pseudo-inputs
            self.prior.bind(self.encode)
        self.flow = (IAF(config.latent_dim, config.flow_steps, config.flow_hidden,
                         context_features=self.encoder.out_features) if config.flow_steps else None)
        self.noise_dim = config.latent_dim  # standard-normal draws per posterior sample

    @property
    def kl_method(self) -> str:
        """How the KL is computed: "analytic", or "monte-carlo" (one sample, log q - log p)."""
        return "analytic" if self.prior.analytic_kl and self.flow is None else "monte-carlo"

    # -- the two halves -----------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Posterior:
        """q(z|x): the diagonal Gaussian (before any flow steps)."""
        return self._posterior(x)[0]

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The code decode() takes at the posterior mean: the mean, through the flow steps if any."""
        return self._code(*self._posterior(x))

    def _posterior(self, x: torch.Tensor) -> tuple[Posterior, torch.Tensor]:
        """The base posterior and the encoder's features h (the flow's context)."""
        h = self.encoder(x)
        mean, logvar = _full(self.posterior_head(h)).chunk(2, dim=-1)
        return Posterior(mean, logvar), h

    def _sample(self, q: Posterior, h: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = flow(mean + std * eps) and log q(z|x) from the noise that made it, (..., L) and (...)."""
        z = q.mean + q.std * eps
        log_q = q.log_prob_of_noise(eps)
        if self.flow is not None:
            z, log_det = self.flow(z, _full(h))
            log_q = log_q - log_det
        return z, log_q

    def _code(self, q: Posterior, h: torch.Tensor) -> torch.Tensor:
        """The code at the posterior mean: the mean, through the flow steps if any."""
        return q.mean if self.flow is None else self.flow(q.mean, _full(h))[0]

    def _kl(self, q: Posterior, h: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, KL per example (B,), KL per dimension (B, L)) for one posterior sample."""
        if self.kl_method == "analytic":
            kl_per_dim = self.prior.kl(q)
            return q.mean + q.std * eps, kl_per_dim.sum(-1), kl_per_dim
        z, log_q = self._sample(q, h, eps)
        return z, log_q - self.prior.log_prob(z), q.kl_per_dim()

    def _noise(self, q: Posterior, generator, noise):
        return noise if noise is not None else torch.randn(
            q.mean.shape, generator=generator, device=q.mean.device, dtype=q.mean.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder parameters, (B, n_params, *event_shape)."""
        return _full(self.decoder(z))

    # -- objectives -----------------------------------------------------------------------
    def loss(self, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> LossOutput:
        """Negative ELBO with a KL weight: recon + beta * KL, averaged over the batch.

        ``free_bits`` (nats per latent dimension, Kingma et al. 2016) stops the optimiser
        pushing a dimension's batch-average KL below that floor.
        """
        q, h = self._posterior(x)
        z, kl_each, kl_per_dim = self._kl(q, h, self._noise(q, generator, noise))
        params = self.decode(z)
        recon = -self.likelihood.log_prob(params, x).mean()
        kl_per_dim = kl_per_dim.mean(0)
        kl = kl_each.mean()
        if free_bits <= 0:
            kl_term = kl
        elif self.kl_method == "analytic":
            kl_term = kl_per_dim.clamp(min=free_bits).sum()
        else:  # a Monte Carlo KL has no parts per dimension: the floor is on the total
            kl_term = kl.clamp(min=free_bits * self.latent_dim)
        loss = recon + beta * kl_term + self.likelihood.penalty(params)
        return LossOutput(loss, recon.detach(), kl.detach(), kl_per_dim.detach(),
                          (-(recon + kl)).detach())

    def iwae_loss(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None) -> LossOutput:
        """The IWAE objective (Burda et al. 2016) with k samples.

        Autograd through logsumexp weights each sample's gradient by its normalised
        importance weight, which is already detached by the softmax's derivative.
        """
        q, h = self._posterior(x)
        log_w, recon_all = self._log_weights(x, q, h, k, generator, noise)
        bound = torch.logsumexp(log_w, 0) - math.log(k)  # (B,)
        kl_per_dim = q.kl_per_dim().mean(0)
        kl = kl_per_dim.sum() if self.kl_method == "analytic" else (-log_w - recon_all).mean()
        loss = -bound.mean()
        return LossOutput(loss, recon_all.mean().detach(), kl.detach(), kl_per_dim.detach(),
                          bound.mean().detach())

    def _log_weights(self, x: torch.Tensor, q: Posterior, h: torch.Tensor, k: int,
                     generator: torch.Generator | None = None,
                     noise: torch.Tensor | None = None, log_prob=None) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x, z_i) - log q(z_i | x) for k samples: (k, B), and -log p(x|z_i): (k, B).

        ``noise`` (k, B, L) supplies the standard-normal draws instead of the generator;
        ``log_prob`` replaces the likelihood's log_prob (e.g. its 8-bit bin mass).
        """
        batch = x.shape[0]
        eps = noise if noise is not None else torch.randn(
            (k, batch, self.latent_dim), generator=generator, device=x.device, dtype=q.mean.dtype)
        z, log_q = self._sample(q, h, eps)  # (k, B, L), (k, B)
        params = self.decode(z.reshape(k * batch, -1))
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
        log_px = (log_prob or self.likelihood.log_prob)(params, x_rep).view(k, batch)
        log_w = log_px + self.prior.log_prob(z) - log_q
        return log_w, -log_px

    @torch.no_grad()
    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None,
                   at_mean: bool = False) -> dict[str, torch.Tensor]:
        """Per-example ELBO, reconstruction (-log p(x|z), one sample) and analytic KL, (B,)
        each; the KL per latent dimension and the posterior means and standard deviations,
        (B, L) (the means through the flow steps if any: the codes decode() takes); with ``at_mean`` also the decoder's parameters at the posterior mean
        ("params_at_mean": what reconstructions show)."""
        q, h = self._posterior(x)
        z, kl, kl_per_dim = self._kl(q, h, self._noise(q, generator, None))
        recon = -self.likelihood.log_prob(self.decode(z), x)
        code = self._code(q, h)  # the posterior mean (through a flow): what figures decode
        terms = {"elbo": -(recon + kl), "recon": recon, "kl": kl, "kl_per_dim": kl_per_dim,
                 "means": code, "stds": q.std}
        if at_mean:
            terms["params_at_mean"] = self.decode(code)
        return terms

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, chunk: int = 0,
                       generator: torch.Generator | None = None, log_prob=None) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) with k samples, (B,).

        Streams over the samples in chunks with a running log-sum-exp, so memory depends on
        the chunk, never on k. ``chunk`` 0 picks one that keeps about 2**20 decoder outputs
        (times the parameter maps) in flight.
        """
        q, h = self._posterior(x)
        if chunk <= 0:
            # a mixture prior's log-density holds one value per component and sample (matrix products)
            chunk = chunk_size(k, x.shape[0] * (math.prod(self.event_shape) * self.likelihood.n_params
                                                + _prior_components(self.prior)))
        with self.prior.held():
            return log_mean_exp_streamed(lambda n: self._log_weights(x, q, h, n, generator, log_prob=log_prob)[0],
                                         k, chunk, x.shape[0], q.mean)

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """Means of p(x|z) for n draws z ~ p(z), in the model's data space."""
        device = device or next(self.parameters()).device
        if isinstance(self.prior, StandardNormal):
            z = torch.randn((n, self.latent_dim), generator=generator, device=device)
        else:
            z = self.prior.sample(n, generator=generator, device=device)
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample_posterior: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means at the posterior mean (or at a posterior sample)."""
        q, h = self._posterior(x)
        z = self._sample(q, h, self._noise(q, generator, None))[0] if sample_posterior else self._code(q, h)
        return self.likelihood.mean(self.decode(z))
