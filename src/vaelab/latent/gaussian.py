"""The diagonal Gaussian over latent codes: q(z|x) with the reparameterization trick."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def diagonal_normal_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last dimension (broadcasting)."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


@dataclass
class Posterior:
    mean: torch.Tensor  # (B, L)
    logvar: torch.Tensor  # (B, L)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """The reparameterization trick: z = mean + std * eps, differentiable in both.

        ``noise`` supplies eps (data-parallel training draws it for the global batch).
        """
        eps = noise if noise is not None else torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl_per_dim(self) -> torch.Tensor:
        """Analytic KL(q(z|x) || N(0, I)) for each latent dimension, (B, L)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over latent dims; z may carry leading sample dims."""
        return diagonal_normal_log_prob(z, self.mean, self.logvar)

    def log_prob_of_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """log q(z|x) at z = mean + std * eps, from the noise that made it: the same value as
        log_prob(z), without the 0 * inf that (z - mean)^2 / var gives when a variance underflows."""
        return -0.5 * (eps.pow(2) + self.logvar + LOG_2PI).sum(-1)
