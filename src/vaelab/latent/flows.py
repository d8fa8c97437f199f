"""Inverse autoregressive flow over latent codes.

Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow",
with the autoregressive networks built as MADE (Germain et al. 2015, "MADE: Masked
Autoencoder for Distribution Estimation").

Each step maps z to sigma * z + (1 - sigma) * m, where (m, s) = MADE(z, h) and
sigma = sigmoid(s + forget_bias): output j reads only z_<j, so the Jacobian is triangular
with diagonal sigma, and log|det| = sum_j log sigma_j.

Density rule: with z_0 ~ q_0(z|x) (the diagonal Gaussian posterior) and
(z_T, log_det) = IAF(z_0, h),

    log q(z_T|x) = log q_0(z_0|x) - log_det.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def hidden_degrees(features: int, width: int, context: bool) -> torch.Tensor:
    """Degrees cycling 1..features-1, deterministic so construction draws no random numbers.

    A unit of degree d may read inputs 1..d. With a context, degree 0 joins the cycle: those
    units read the context alone, the only path by which output 1 (which sees no z) gets it.
    """
    low = 0 if context or features == 1 else 1
    return torch.arange(width) % (features - low) + low


class MADE(nn.Module):
    """A masked MLP: output [:, p, j] depends on z_<j (strictly) and on all of the context."""

    def __init__(self, features: int, hidden: list[int], context_features: int = 0,
                 out_per_dim: int = 2):
        super().__init__()
        self.features, self.out_per_dim = features, out_per_dim
        in_degrees = torch.arange(1, features + 1)
        degrees = [in_degrees] + [hidden_degrees(features, h, context_features > 0) for h in hidden]
        layers = []
        for before, after in zip(degrees[:-1], degrees[1:]):
            mask = after[:, None] >= before[None, :]
            layers.append(MaskedLinear(len(before), len(after), mask))
        # Output unit (p, j) has degree j and must see strictly earlier inputs only.
        out_degrees = in_degrees.repeat(out_per_dim)
        mask = out_degrees[:, None] > degrees[-1][None, :]
        layers.append(MaskedLinear(len(degrees[-1]), len(out_degrees), mask))
        self.layers = nn.ModuleList(layers)
        # The context is not autoregressive: it enters the first layer unmasked.
        self.context = (nn.Linear(context_features, layers[0].out_features, bias=False)
                        if context_features else None)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layers[0](z)
        if self.context is not None:
            if context is None:
                raise ValueError("this MADE was built with context_features > 0: pass a context")
            x = x + self.context(context)
        for layer in self.layers[1:]:
            x = layer(F.elu(x))
        return x.view(*z.shape[:-1], self.out_per_dim, self.features)


class IAFStep(nn.Module):
    """One IAF step in the paper's numerically stable, LSTM-like form."""

    def __init__(self, features: int, hidden: list[int], context_features: int = 0,
                 forget_bias: float = 1.5):
        super().__init__()
        self.made = MADE(features, hidden, context_features, out_per_dim=2)
        # A positive bias keeps sigma near 1 at first, so each step starts near the identity.
        self.forget_bias = forget_bias

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None):
        """(z_new, log_det) with log_det = sum_j log sigma_j, one per example."""
        out = self.made(z, context)
        if out.dtype in (torch.bfloat16, torch.float16):  # autocast: the density stays float32
            out = out.float()
        m, s = out.unbind(-2)
        gate = s + self.forget_bias
        # sigmoid(-gate) is 1 - sigma without the cancellation when sigma is near 1.
        z_new = torch.sigmoid(gate) * z + torch.sigmoid(-gate) * m
        return z_new, F.logsigmoid(gate).sum(-1)


class IAF(nn.Module):
    """n_steps IAF steps; odd steps use the reversed variable order.

    Reversing between steps lets every dimension depend on every other after two steps.
    Each odd step reads and writes the flipped vector, so z_T keeps the order of z_0; a
    permutation has |det| = 1, so log_det is the sum of the steps'.
    """

    def __init__(self, latent_dim: int, n_steps: int, hidden: list[int], context_features: int = 0,
                 forget_bias: float = 1.5):
        super().__init__()
        self.latent_dim, self.context_features = latent_dim, context_features
        self.steps = nn.ModuleList(
            IAFStep(latent_dim, hidden, context_features, forget_bias) for _ in range(n_steps))

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None):
        """z: (..., L), e.g. (B, L) or (K, B, L); context: (B, C) broadcast over leading sample dims.

        Returns (z_T of z's shape, log_det of shape z.shape[:-1]).
        """
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.latent_dim)
        if context is not None:
            context = context.expand(*lead, context.shape[-1]).reshape(-1, context.shape[-1])
        log_det = flat.new_zeros(flat.shape[0])
        for t, step in enumerate(self.steps):
            if t % 2:
                flat, ld = step(flat.flip(-1), context)
                flat = flat.flip(-1)
            else:
                flat, ld = step(flat, context)
            log_det = log_det + ld
        return flat.view(*lead, self.latent_dim), log_det.view(lead)
