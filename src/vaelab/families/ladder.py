"""The Ladder VAE (Sønderby et al. 2016, "Ladder Variational Autoencoders"): L stochastic layers.

Generative model, top down::

    p(z_L) = N(0, I),   p(z_i | z_{i+1}) = N(mu_p, var_p) for i = L-1 .. 1,   p(x | z_1)

Inference shares the top-down path. A deterministic bottom-up pass d_1 = f_1(x),
d_i = f_i(d_{i-1}) gives each layer an estimate (mu_hat_i, var_hat_i) from the data alone; the
posterior of layer i then merges it with the top-down prior estimate by adding precisions::

    var_q = 1 / (1/var_hat + 1/var_p),   mu_q = var_q * (mu_hat / var_hat + mu_p / var_p)

and the top layer's posterior is the bottom-up estimate alone. Samples go top down:
z_L ~ q(z_L|x), then z_i ~ q(z_i | x, z_{i+1}).

The KL of layer i is the analytic Gaussian KL of q(z_i|.) against p(z_i|z_{i+1}) at the
sampled z_{i+1}: a one-sample, unbiased estimate of that layer's expected KL.

The public methods mirror :class:`vaelab.model.VAE` (same names, signatures, units: nats per
example summed over its dimensions, losses averaged over the batch) so the trainer and the
evaluator can take either model. Where a VAE has one latent vector this model has all layers'
codes concatenated, bottom layer first: ``noise`` and ``kl_per_dim`` have ``noise_dim`` =
sum(latent_dims) columns. ``latent_dim`` is the TOP layer's size: ``encode`` and ``decode``
work in that space, so latent traversals and prior-space figures use the top of the hierarchy.

Networks: every deterministic block is ``depth`` fully connected hidden layers; with
``network="conv"`` the first bottom-up block is a ConvEncoder and p(x|z_1) a ConvDecoder. There
are no residual blocks, no skip connections from z_2.. to x, and no batch-norm or warm-up
schedule of the paper's: KL warm-up is the trainer's ``beta``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..latent.gaussian import Posterior, diagonal_normal_log_prob
from ..latent.priors import Prior, StandardNormal, VampPrior, build_prior
from ..importance import chunk_size, log_mean_exp_streamed
from ..likelihoods import Likelihood, build_likelihood
from ..model import LossOutput
from ..nn.conv import ConvDecoder, ConvEncoder, ConvStack
from ..nn.mlp import MLPDecoder, MLPEncoder, mlp_layers

NETWORKS = ("mlp", "conv")


def _full(t: torch.Tensor) -> torch.Tensor:
    """Under bf16/fp16 autocast the networks run in half precision; the distributions stay fp32."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def precision_weighted(mean_hat: torch.Tensor, logvar_hat: torch.Tensor,
                       mean_p: torch.Tensor, logvar_p: torch.Tensor) -> Posterior:
    """The ladder posterior: the bottom-up and top-down Gaussians multiplied, renormalised.

    Computed in log-variances: logaddexp and sigmoid never divide by a variance, so a layer
    whose two estimates differ in scale by e^80 still gives a finite posterior.
    """
    logvar = -torch.logaddexp(-logvar_hat, -logvar_p)
    share = torch.sigmoid(logvar_p - logvar_hat)  # the bottom-up precision's share of the total
    return Posterior(share * mean_hat + (1 - share) * mean_p, logvar)


def gaussian_kl_per_dim(q: Posterior, mean_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """Analytic KL(q || N(mean_p, exp(logvar_p))) per dimension."""
    return 0.5 * (logvar_p - q.logvar + torch.exp(q.logvar - logvar_p)
                  + (q.mean - mean_p).pow(2) * torch.exp(-logvar_p) - 1.0)


def _positive_ints(values) -> bool:
    return all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values)


class LadderVAE(nn.Module):
    """A top-down hierarchical VAE with ``len(latent_dims)`` stochastic layers.

    ``likelihood`` is an observation model from :func:`vaelab.likelihoods.build_likelihood`
    (or its name, built with the defaults). ``latent_dims`` and ``hidden`` list, bottom layer
    first, each layer's code size and the width of its deterministic blocks: layer i's
    bottom-up block f_i and the top-down block predicting p(z_i | z_{i+1}) are ``depth`` hidden
    layers of ``hidden[i]``, and so is the decoder p(x | z_1) (``hidden[0]``). With
    ``network="conv"`` f_1 and the decoder are the convolutional pair set by ``channels``,
    ``kernels``, ``strides`` and ``dense`` (as in :mod:`vaelab.nn.conv`) instead.
    """

    kl_method = "analytic"  # each layer's KL is analytic, given the sample of the layer above

    def __init__(self, event_shape: tuple[int, ...], likelihood: Likelihood | str,
                 latent_dims: list[int], hidden: list[int], network: str = "mlp",
                 activation: str = "relu", batch_norm: bool = False, depth: int = 1,
                 channels: list[int] = (32, 64), kernels: list[int] = (4, 4),
                 strides: list[int] = (2, 2), dense: int = 256, prior: Prior | None = None):
        super().__init__()
        self.event_shape = tuple(int(d) for d in event_shape)
        latent_dims, hidden = list(latent_dims), list(hidden)
        if not latent_dims or len(latent_dims) != len(hidden):
            raise ValueError(f"latent_dims and hidden need one entry per stochastic layer, got "
                             f"{latent_dims} and {hidden}")
        if not _positive_ints(latent_dims + hidden + [depth]):
            raise ValueError(f"latent_dims, hidden and depth must be integers >= 1, got "
                             f"{latent_dims}, {hidden}, {depth}")
        latent_dims, hidden = [int(d) for d in latent_dims], [int(h) for h in hidden]
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; choose one of: {', '.join(NETWORKS)}")
        if network == "conv" and len(self.event_shape) != 3:
            raise ValueError(f"network='conv' needs images (C, H, W), got event_shape {self.event_shape}")
        if isinstance(likelihood, str):
            likelihood = build_likelihood(likelihood, self.event_shape)
        if tuple(likelihood.event_shape) != self.event_shape:
            raise ValueError(f"the likelihood is for examples of shape {likelihood.event_shape}, "
                             f"the model for {self.event_shape}")
        self.likelihood = likelihood
        self.latent_dims = latent_dims
        self.n_layers = len(latent_dims)
        self.latent_dim = latent_dims[-1]
        self.noise_dim = sum(latent_dims)
        self.network = network
        # p(z_L): N(0, I) unless given (a VampPrior's components come through the bottom-up
        # path, as the top layer's posterior is the bottom-up estimate alone)
        self.prior = prior if prior is not None else StandardNormal(latent_dims[-1])
        if isinstance(self.prior, VampPrior):
            self.prior.bind(self.encode)
        self.kl_method = "analytic" if self.prior.analytic_kl else "monte-carlo"

        def block(in_features: int, width: int) -> nn.Sequential:
            return mlp_layers(in_features, [width] * depth, activation, batch_norm, 0.0)[0]

        # bottom-up: f_i and a head giving (mu_hat_i, logvar_hat_i)
        stack = ConvStack(list(channels), list(kernels), list(strides), dense, activation, batch_norm)
        if network == "conv":
            first = ConvEncoder(self.event_shape, stack)
            width = first.out_features
        else:
            first = MLPEncoder(self.event_shape, [hidden[0]] * depth, activation, batch_norm)
            width = first.out_features
        self.up = nn.ModuleList([first])
        self.up_heads = nn.ModuleList([nn.Linear(width, 2 * latent_dims[0])])
        for i in range(1, self.n_layers):
            self.up.append(block(width, hidden[i]))
            width = hidden[i]
            self.up_heads.append(nn.Linear(width, 2 * latent_dims[i]))

        # top-down: down[i] maps z_{i+1} to (mu_p, logvar_p) of z_i (0-based, bottom first); its
        # last module is the head, whose second half of rows is the log-variance
        self.down = nn.ModuleList(
            nn.Sequential(*block(latent_dims[i + 1], hidden[i]), nn.Linear(hidden[i], 2 * latent_dims[i]))
            for i in range(self.n_layers - 1))

        init_bias = likelihood.init_bias()
        n_params = likelihood.n_params
        if network == "conv":
            self.decoder = ConvDecoder(latent_dims[0], self.event_shape, n_params, stack, init_bias)
        else:
            self.decoder = MLPDecoder(latent_dims[0], self.event_shape, n_params, [hidden[0]] * depth,
                                      activation, batch_norm, 0.0, init_bias)

    # -- the two passes -------------------------------------------------------------------
    def _bottom_up(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mu_hat_i, logvar_hat_i) of every layer from the data alone, bottom first."""
        estimates, d = [], x
        for f, head in zip(self.up, self.up_heads):
            d = f(d)
            mean, logvar = _full(head(d)).chunk(2, dim=-1)
            estimates.append((mean, logvar))
        return estimates

    def _prior(self, i: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_p, logvar_p) of p(z_i | z_{i+1}), layer i counted from 0 at the bottom."""
        mean, logvar = _full(self.down[i](z_above)).chunk(2, dim=-1)
        return mean, logvar

    def _top_down(self, estimates, eps: torch.Tensor):
        """Sample every layer from its posterior, top first; eps (N, noise_dim), bottom's columns first.

        Returns lists indexed bottom first: codes z_i, posteriors q_i, priors (mu_p, logvar_p)
        (None for the top layer, whose prior is N(0, I)), and each layer's slice of eps.
        """
        eps_parts = list(eps.split(self.latent_dims, dim=-1))
        z, q, prior = [None] * self.n_layers, [None] * self.n_layers, [None] * self.n_layers
        for i in reversed(range(self.n_layers)):
            mean_hat, logvar_hat = estimates[i]
            if i == self.n_layers - 1:
                q[i] = Posterior(mean_hat, logvar_hat)
            else:
                prior[i] = self._prior(i, z[i + 1])
                q[i] = precision_weighted(mean_hat, logvar_hat, *prior[i])
            z[i] = q[i].rsample(noise=eps_parts[i])
        return z, q, prior, eps_parts

    @staticmethod
    def _kl_per_dim(q, prior) -> torch.Tensor:
        """Each layer's analytic KL per dimension, concatenated bottom first: (N, noise_dim)."""
        parts = [qi.kl_per_dim() if p is None else gaussian_kl_per_dim(qi, *p) for qi, p in zip(q, prior)]
        return torch.cat(parts, dim=-1)

    def _kl_per_layer(self, kl_per_dim: torch.Tensor) -> torch.Tensor:
        return torch.stack([part.sum(-1) for part in kl_per_dim.split(self.latent_dims, dim=-1)], -1)

    def _kl(self, z, q, prior) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(KL per example (N,), per layer (N, n_layers), per dimension (N, noise_dim)). The top
        layer's KL against a prior without a closed form is the one-sample log q - log p; its
        per-dimension columns are then the KL against N(0, I), an information measure only."""
        kl_per_dim = self._kl_per_dim(q, prior)
        per_layer = self._kl_per_layer(kl_per_dim)
        if self.kl_method != "analytic":
            top = q[-1].log_prob(z[-1]) - self.prior.log_prob(z[-1])
            per_layer = torch.cat([per_layer[..., :-1], top.unsqueeze(-1)], -1)
        return per_layer.sum(-1), per_layer, kl_per_dim

    def _draw(self, prefix: tuple[int, ...], generator, like: torch.Tensor) -> torch.Tensor:
        """Standard-normal draws for whole posterior samples, all layers in one call."""
        return torch.randn((*prefix, self.noise_dim), generator=generator, device=like.device,
                           dtype=like.dtype)

    def _params(self, z1: torch.Tensor) -> torch.Tensor:
        """Decoder parameters of p(x | z_1), (B, n_params, *event_shape)."""
        return _full(self.decoder(z1))

    # -- the VAE's interface ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Posterior:
        """q(z_L | x) of the top layer: its bottom-up estimate alone."""
        mean, logvar = self._bottom_up(x)[-1]
        return Posterior(mean, logvar)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The code decode() takes: the top layer's posterior mean."""
        return self.encode(x).mean

    def encode_all(self, x: torch.Tensor) -> list[Posterior]:
        """Every layer's posterior, bottom first, each at the posterior means of the layers above."""
        estimates = self._bottom_up(x)
        zeros = torch.zeros(x.shape[0], self.noise_dim, device=estimates[0][0].device,
                            dtype=estimates[0][0].dtype)
        return self._top_down(estimates, zeros)[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder parameters for a top-layer code, every lower layer at its prior mean."""
        for i in reversed(range(self.n_layers - 1)):
            z = self._prior(i, z)[0]
        return self._params(z)

    def loss(self, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> LossOutput:
        """Negative ELBO with a KL weight: recon + beta * KL, averaged over the batch.

        KL is the sum over layers; ``free_bits`` floors each layer dimension's batch-average KL
        as in VAE.loss. ``noise`` (B, noise_dim) supplies the standard-normal draws.
        """
        estimates = self._bottom_up(x)
        eps = noise if noise is not None else self._draw((x.shape[0],), generator, estimates[0][0])
        z, q, prior, _ = self._top_down(estimates, eps)
        params = self._params(z[0])
        recon = -self.likelihood.log_prob(params, x).mean()
        kl_each, per_layer, kl_per_dim = self._kl(z, q, prior)
        kl_per_dim, per_layer, kl = kl_per_dim.mean(0), per_layer.mean(0), kl_each.mean()
        if free_bits <= 0:
            kl_term = kl
        elif self.kl_method == "analytic":
            kl_term = kl_per_dim.clamp(min=free_bits).sum()
        else:  # the top layer's Monte Carlo KL has no parts per dimension: its floor is on its total
            lower = kl_per_dim[:self.noise_dim - self.latent_dim].clamp(min=free_bits).sum()
            kl_term = lower + per_layer[-1].clamp(min=free_bits * self.latent_dim)
        loss = recon + beta * kl_term + self.likelihood.penalty(params)
        return LossOutput(loss, recon.detach(), kl.detach(), kl_per_dim.detach(),
                          (-(recon + kl)).detach(), per_layer.detach())

    def iwae_loss(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None) -> LossOutput:
        """The IWAE objective (Burda et al. 2016) with k samples of the whole hierarchy.

        ``noise`` is (k, B, noise_dim). kl_per_dim reports the analytic layer KLs averaged over
        the k samples and the batch; kl the same, or log q - log p over the samples where the
        top prior has no closed-form KL.
        """
        estimates = self._bottom_up(x)
        log_w, recon_all, kl_all = self._log_weights(x, estimates, k, generator, noise)
        bound = torch.logsumexp(log_w, 0) - math.log(k)  # (B,)
        kl_per_dim = kl_all.mean((0, 1))
        per_layer = self._kl_per_layer(kl_per_dim)
        kl = per_layer.sum()
        if self.kl_method != "analytic":  # the top layer's KL as log q - log p over the samples, as loss() has it
            kl = (-log_w - recon_all).mean()
            per_layer = torch.cat([per_layer[:-1], (kl - per_layer[:-1].sum()).unsqueeze(0)])
        return LossOutput(-bound.mean(), recon_all.mean().detach(), kl.detach(), kl_per_dim.detach(),
                          bound.mean().detach(), per_layer.detach())

    def _log_weights(self, x: torch.Tensor, estimates, k: int,
                     generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                     log_prob=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x, z_1..z_L) - log q(z_1..z_L | x) for k samples: (k, B); -log p(x|z_1): (k, B);
        and the analytic layer KLs per dimension: (k, B, noise_dim)."""
        batch = x.shape[0]
        eps = noise if noise is not None else self._draw((k, batch), generator, estimates[0][0])
        # the bottom-up pass is deterministic: run it once and repeat it for the k samples
        repeated = [(m.repeat(k, 1), lv.repeat(k, 1)) for m, lv in estimates]
        z, q, prior, eps_parts = self._top_down(repeated, eps.reshape(k * batch, self.noise_dim))
        params = self._params(z[0])
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
        log_px = (log_prob or self.likelihood.log_prob)(params, x_rep)
        log_w = log_px + self.prior.log_prob(z[-1])
        for i in range(self.n_layers):
            if prior[i] is not None:
                log_w = log_w + diagonal_normal_log_prob(z[i], *prior[i])
            # log q from the noise: no (z - mean)^2 / var that turns 0 * inf when a variance underflows
            log_w = log_w - q[i].log_prob_of_noise(eps_parts[i])
        kl = self._kl_per_dim(q, prior)
        return log_w.view(k, batch), -log_px.view(k, batch), kl.view(k, batch, -1)

    @torch.no_grad()
    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None,
                   at_mean: bool = False) -> dict[str, torch.Tensor]:
        """Per-example ELBO, reconstruction (-log p(x|z_1), one sample) and KL summed over layers,
        (B,) each; "kl_per_dim", "means" and "stds" (B, noise_dim), bottom layer's columns
        first, the posteriors at the posterior means of the layers above; with ``at_mean``
        the decoder's parameters there ("params_at_mean")."""
        estimates = self._bottom_up(x)
        z, q, prior, _ = self._top_down(estimates, self._draw((x.shape[0],), generator, estimates[0][0]))
        recon = -self.likelihood.log_prob(self._params(z[0]), x)
        kl, _, kl_per_dim = self._kl(z, q, prior)
        like = estimates[0][0]
        z_mean, q_mean, _, _ = self._top_down(estimates, torch.zeros(x.shape[0], self.noise_dim, device=like.device,
                                                                    dtype=like.dtype))
        terms = {"elbo": -(recon + kl), "recon": recon, "kl": kl, "kl_per_dim": kl_per_dim,
                 "means": torch.cat([p.mean for p in q_mean], -1), "stds": torch.cat([p.std for p in q_mean], -1)}
        if at_mean:
            terms["params_at_mean"] = self._params(z_mean[0])
        return terms

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, chunk: int = 0,
                       generator: torch.Generator | None = None, log_prob=None) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) with k samples, (B,).

        Streams over the samples in chunks with a running log-sum-exp, so memory depends on the
        chunk, never on k; ``chunk`` 0 picks one as VAE.log_likelihood does. ``log_prob``
        replaces the likelihood's log_prob (e.g. its 8-bit bin mass).
        """
        estimates = self._bottom_up(x)
        if chunk <= 0:
            chunk = chunk_size(k, x.shape[0] * math.prod(self.event_shape) * self.likelihood.n_params)
        with self.prior.held():
            return log_mean_exp_streamed(lambda n: self._log_weights(x, estimates, n, generator, log_prob=log_prob)[0],
                                         k, chunk, x.shape[0], estimates[0][0])

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """Means of p(x|z_1) for n ancestral draws z_L ~ N(0, I), z_i ~ p(z_i | z_{i+1})."""
        like = next(self.parameters())
        eps = torch.randn((n, self.noise_dim), generator=generator, device=device or like.device,
                          dtype=like.dtype)
        parts = eps.split(self.latent_dims, dim=-1)
        z = parts[-1] if isinstance(self.prior, StandardNormal) else self.prior.sample(n, generator, device=like.device)
        for i in reversed(range(self.n_layers - 1)):
            mean, logvar = self._prior(i, z)
            z = mean + torch.exp(0.5 * logvar) * parts[i]
        return self.likelihood.mean(self._params(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample_posterior: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means at the posterior means of every layer (or at one posterior sample)."""
        estimates = self._bottom_up(x)
        like = estimates[0][0]
        eps = (self._draw((x.shape[0],), generator, like) if sample_posterior
               else torch.zeros(x.shape[0], self.noise_dim, device=like.device, dtype=like.dtype))
        z = self._top_down(estimates, eps)[0]
        return self.likelihood.mean(self._params(z[0]))


def ladder_from_config(config, event_shape: tuple[int, ...]) -> LadderVAE:
    """A LadderVAE from a ModelConfig: model.ladder_dims (lower layers, bottom first) below
    model.latent_dim (the top), model.hidden one width per layer, model.encoder the network."""
    from ..likelihoods import likelihood_from_config

    return LadderVAE(event_shape, likelihood_from_config(config, event_shape),
                     latent_dims=[*config.ladder_dims, config.latent_dim], hidden=list(config.hidden),
                     network=config.encoder, activation=config.activation, batch_norm=config.batch_norm,
                     depth=config.ladder_depth, channels=config.conv_channels, kernels=config.conv_kernels,
                     strides=config.conv_strides, dense=config.conv_dense,
                     prior=build_prior(config.prior, config.latent_dim, n_components=config.prior_components,
                                       event_shape=event_shape))
