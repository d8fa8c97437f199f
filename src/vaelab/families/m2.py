"""M2, the semi-supervised VAE of Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised
Learning with Deep Generative Models" (NeurIPS).

Generative model p(x | y, z) p(y) p(z): a class y (uniform prior over n_classes) and a
continuous style z ~ N(0, I). Inference: a classifier q(y | x) and q(z | x, y).

- A labelled pair (x, y): L(x, y) = E_q(z|x,y)[log p(x|y,z)] + log p(y) - KL(q(z|x,y) || p(z)),
  a lower bound on log p(x, y).
- An unlabelled x: U(x) = sum_y q(y|x) L(x, y) + H(q(y|x)), a lower bound on log p(x); the
  sum over classes is exact (every class is decoded).
- The classifier also learns from the labels directly: J^alpha = J + alpha E_labelled[-log q(y|x)]
  (J the sum of the bounds over the training set), with Kingma's alpha = 0.1 N (N the
  training images): train.class_weight = alpha / N = 0.1.
- Training may weigh the entropy term of U by lambda = train.entropy_weight in [0, 1]:
  U_lambda(x) = sum_y q(y|x) L(x, y) + lambda H(q(y|x)) <= U(x), still a lower bound on log p(x).
  The best q(y|x) for U_lambda is proportional to exp(L(x, y) / lambda): the model's own
  posterior over classes, sharpened. With lambda = 1 (Kingma) it is that posterior, which is
  uniform while the decoder ignores y, so early on every unlabelled image pulls q(y|x) towards
  uniform, against the labels; lambda = 0 drops that pull (docs/reproductions.md measures it).
  Reported bounds and evaluation are always U(x).

A training batch holds unlabelled images (label -1) and labelled ones. With ``weights``
(w_u, w_l, w_ce) the loss is w_u * mean_unlabelled(-U) + w_l * mean_labelled(-L) +
w_ce * mean_labelled(-log q(y|x)): with w_u = N_u / N, w_l = N_l / N and w_ce = alpha / N it
is Kingma's objective J^alpha divided by N, in nats per image (train.labelled_weight multiplies
w_l: each labelled image's bound counted that many times).

Evaluation measures log p(x): the ELBO is U(x), and the importance-weighted estimate is
log sum_y p(y) p^(x | y) with K samples of z per class. ``decode(z)`` draws the first class
(``decode(z, y)`` any other): figures of the style space show one digit class.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..latent.gaussian import Posterior, standard_normal_log_prob
from ..importance import chunk_size, log_mean_exp_streamed
from ..likelihoods import likelihood_from_config
from ..model import LossOutput, _full
from ..nn import build_decoder, build_encoder


class M2(nn.Module):
    uses_labels = True
    kl_method = "analytic"

    def __init__(self, config, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.latent_dim = self.noise_dim = config.latent_dim
        self.n_classes = config.n_classes
        self.likelihood = likelihood_from_config(config, self.event_shape)
        # q(y|x) is a network of its own, as in the paper; q(z|x,y) reads x's features and y
        self.classifier = build_encoder(config, self.event_shape)
        self.classifier_head = nn.Linear(self.classifier.out_features, self.n_classes)
        self.encoder = build_encoder(config, self.event_shape)
        self.posterior_head = nn.Linear(self.encoder.out_features + self.n_classes, 2 * self.latent_dim)
        # p(x|y,z): the decoder takes [z, one-hot y]
        wider = dataclasses.replace(config, latent_dim=self.latent_dim + self.n_classes)
        self.decoder = build_decoder(wider, self.event_shape, self.likelihood.n_params, self.likelihood.init_bias())

    # -- the networks ---------------------------------------------------------------------
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """log q(y|x), (B, n_classes)."""
        return torch.log_softmax(_full(self.classifier_head(self.classifier(x))), -1)

    def _onehot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.n_classes).float()

    def _posterior(self, h: torch.Tensor, y: torch.Tensor) -> Posterior:
        mean, logvar = _full(self.posterior_head(torch.cat([h, self._onehot(y).to(h.dtype)], -1))).chunk(2, -1)
        return Posterior(mean, logvar)

    def _params(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _full(self.decoder(torch.cat([z, self._onehot(y).to(z.dtype)], -1)))

    def _every_class(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t repeated once per class, (C * B, ...), and the classes, (C * B,): class-major."""
        batch = t.shape[0]
        y = torch.arange(self.n_classes, device=t.device).repeat_interleave(batch)
        return t.repeat(self.n_classes, *([1] * (t.dim() - 1))), y

    # -- the bounds ---------------------------------------------------------------------------
    def _labelled(self, x, h, y, eps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Posterior]:
        """L(x, y) (B,), -log p(x|y,z) (B,), KL per dimension of z (B, L), and q(z|x,y)."""
        q = self._posterior(h, y)
        params = self._params(q.rsample(noise=eps), y)
        recon = -self.likelihood.log_prob(params, x)
        kl_per_dim = q.kl_per_dim()
        bound = -recon - kl_per_dim.sum(-1) - math.log(self.n_classes)
        return bound, recon, kl_per_dim, q

    def _unlabelled(self, x, h, eps, log_qy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """U(x) (B,), E_q(y|x)[-log p(x|y,z)] (B,), the KL (B,) and E_q(y|x) of the KL of z per
        dimension (B, L): L(x, y) for every class at once, weighted by q(y|x)."""
        batch = x.shape[0]
        xs, ys = self._every_class(x)
        hs, _ = self._every_class(h)
        bound, recon, kl_per_dim, _ = self._labelled(xs, hs, ys, eps.repeat(self.n_classes, 1))
        qy = log_qy.exp().T  # (C, B)
        entropy = -(log_qy.exp() * log_qy).sum(-1)
        expected = (qy * bound.view(self.n_classes, batch)).sum(0)
        recon_e = (qy * recon.view(self.n_classes, batch)).sum(0)
        kl_e = (qy.unsqueeze(-1) * kl_per_dim.view(self.n_classes, batch, -1)).sum(0)
        # KL(q(y|x) || p(y)) = log C - H: with the z part it makes U = -recon - KL
        kl = kl_e.sum(-1) + math.log(self.n_classes) - entropy
        return expected + entropy, recon_e, kl, kl_e

    def _draw(self, x: torch.Tensor, generator, noise) -> torch.Tensor:
        return noise if noise is not None else torch.randn(
            (x.shape[0], self.latent_dim), generator=generator, device=x.device)

    def loss(self, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
             labels: torch.Tensor | None = None, weights: tuple[float, float, float] = (1.0, 1.0, 0.0),
             counts: tuple[int, int] | None = None, entropy_weight: float = 1.0) -> LossOutput:
        """Kingma's objective over a batch of unlabelled (label -1) and labelled images; the
        reported recon, KL and ELBO are over the unlabelled ones (all, if none carry labels).
        ``beta`` weights the KL of z (and of y: the whole KL term); free bits are not offered
        (the config refuses them). ``entropy_weight`` is lambda of U_lambda, the unlabelled
        bound trained on.

        ``counts`` (unlabelled, labelled) are the whole batch's when ``x`` is one process's
        shard of it (DDP): the means are then over the whole batch, and every value comes back
        per image of the shard (times whole / shard), so the shards' values weighted by their
        sizes add up to the whole batch's, as for every other model."""
        h = self.encoder(x)
        log_qy = self.classify(x)
        eps = self._draw(x, generator, noise)
        labels = labels if labels is not None else torch.full((x.shape[0],), -1, device=x.device)
        known = labels >= 0
        unl = ~known
        here_u, here_l = int(unl.sum()), int(known.sum())
        n_u, n_l = counts if counts is not None else (here_u, here_l)
        w_u, w_l, w_ce = weights
        loss = x.new_zeros((), dtype=torch.float32)
        report = None  # sums of (recon, KL, KL per dim), and over how many images of the whole batch
        if here_u:
            bound, recon, kl, kl_per_dim = self._unlabelled(x[unl], h[unl], eps[unl], log_qy[unl])
            # -U_lambda = -U + (1 - lambda) H, with H = KL(q(z)) + log C - KL (the whole KL)
            entropy = kl_per_dim.sum(-1) + math.log(self.n_classes) - kl
            loss = loss + w_u * (recon + beta * (kl + (1 - entropy_weight) * entropy)).sum() / n_u
            report = (recon, kl, kl_per_dim, n_u)
        if here_l:
            bound_l, recon_l, kl_l, _ = self._labelled(x[known], h[known], labels[known], eps[known])
            kl_total = kl_l.sum(-1) + math.log(self.n_classes)
            loss = loss + (w_l * (recon_l + beta * kl_total).sum()
                           + w_ce * F.nll_loss(log_qy[known], labels[known], reduction="sum")) / n_l
            if not n_u:
                report = (recon_l, kl_total, kl_l, n_l)
        scale = (n_u + n_l) / x.shape[0]  # 1 unless x is a shard
        if report is None:  # a shard with labelled images only, of a batch with unlabelled ones
            zero = loss.detach() * 0
            return LossOutput(loss * scale, zero, zero, x.new_zeros(self.latent_dim), zero)
        recon, kl, kl_per_dim, n = report
        per = scale / n
        return LossOutput(loss * scale, recon.sum().detach() * per, kl.sum().detach() * per,
                          kl_per_dim.sum(0).detach() * per, (-(recon + kl)).sum().detach() * per)

    def iwae_loss(self, x, k, generator=None, noise=None):
        raise NotImplementedError("M2 trains on its ELBO (train.objective=elbo)")

    @torch.no_grad()
    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None,
                   at_mean: bool = False) -> dict[str, torch.Tensor]:
        """U(x) and its parts, (B,); the KL of z per dimension; the posterior of z at the most
        probable class, and with ``at_mean`` the decoder's parameters there."""
        h = self.encoder(x)
        log_qy = self.classify(x)
        bound, recon, kl, kl_per_dim = self._unlabelled(x, h, self._draw(x, generator, None), log_qy)
        guess = log_qy.argmax(-1)
        q = self._posterior(h, guess)
        terms = {"elbo": bound, "recon": recon, "kl": kl, "kl_per_dim": kl_per_dim, "means": q.mean, "stds": q.std}
        if at_mean:
            terms["params_at_mean"] = self._params(q.mean, guess)
        return terms

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, chunk: int = 0,
                       generator: torch.Generator | None = None, log_prob=None) -> torch.Tensor:
        """log p(x) = log sum_y p(y) p(x|y), each p(x|y) importance-weighted with k samples of
        q(z|x,y), streamed over the samples in chunks; (B,)."""
        h = self.encoder(x)
        batch = x.shape[0]
        xs, ys = self._every_class(x)
        hs, _ = self._every_class(h)
        q = self._posterior(hs, ys)  # (C * B, L)
        rows = xs.shape[0]
        if chunk <= 0:
            chunk = chunk_size(k, rows * math.prod(self.event_shape) * self.likelihood.n_params)

        def log_weights(n: int) -> torch.Tensor:
            eps = torch.randn((n, rows, self.latent_dim), generator=generator, device=x.device)
            z = q.mean + q.std * eps
            params = self._params(z.reshape(n * rows, -1), ys.repeat(n))
            x_rep = xs.unsqueeze(0).expand(n, *xs.shape).reshape(n * rows, *xs.shape[1:])
            log_px = (log_prob or self.likelihood.log_prob)(params, x_rep).view(n, rows)
            return log_px + standard_normal_log_prob(z) - q.log_prob_of_noise(eps)

        per_class = log_mean_exp_streamed(log_weights, k, chunk, rows, q.mean).view(self.n_classes, batch)
        return torch.logsumexp(per_class, 0) - math.log(self.n_classes)

    # -- codes and images -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Posterior:
        """q(z | x, y) at the classifier's most probable class."""
        h = self.encoder(x)
        return self._posterior(h, self.classify(x).argmax(-1))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The code decode() takes at the posterior mean: q(z|x,y)'s mean at the most probable class."""
        return self.encode(x).mean

    def decode(self, z: torch.Tensor, y: torch.Tensor | int = 0) -> torch.Tensor:
        """Decoder parameters of p(x | y, z); y a class index or one per z (default: the first class)."""
        if not torch.is_tensor(y) or y.dim() == 0:
            y = torch.full((z.shape[0],), int(y), device=z.device)
        return self._params(z, y.to(z.device).long())

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Means of p(x|y,z) for z ~ N(0, I) and y ~ p(y) (uniform), or the classes ``y`` given."""
        device = device or next(self.parameters()).device
        z = torch.randn((n, self.latent_dim), generator=generator, device=device)
        if y is None:
            y = torch.randint(self.n_classes, (n,), generator=generator, device=device)
        return self.likelihood.mean(self._params(z, y.to(device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample_posterior: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means at q(z|x,y)'s mean (or a sample) for the most probable class y."""
        h = self.encoder(x)
        guess = self.classify(x).argmax(-1)
        q = self._posterior(h, guess)
        z = q.rsample(generator) if sample_posterior else q.mean
        return self.likelihood.mean(self._params(z, guess))

    @torch.no_grad()
    def redraw(self, x: torch.Tensor) -> torch.Tensor:
        """Kingma's analogies: each image's style z (at its most probable class) decoded as
        every class, (B, n_classes, *event_shape) decoder means."""
        z = self.encode(x).mean
        zs, ys = self._every_class(z)
        means = self.likelihood.mean(self._params(zs, ys))
        return means.view(self.n_classes, x.shape[0], *self.event_shape).transpose(0, 1)
