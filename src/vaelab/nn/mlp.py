"""Fully connected networks: Linear -> [BatchNorm] -> activation -> [Dropout], repeated."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import activation_layer


def mlp_layers(in_features: int, hidden: list[int], activation: str, batch_norm: bool,
               dropout: float) -> tuple[nn.Sequential, int]:
    """The hidden stack; returns (module, its output width)."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if batch_norm:  # before the activation, as in Ioffe & Szegedy
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation_layer(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers), width


class MLPEncoder(nn.Module):
    """Flattens one example of any shape and runs the hidden stack."""

    def __init__(self, in_shape: tuple[int, ...], hidden: list[int], activation: str = "relu",
                 batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.body, self.out_features = mlp_layers(math.prod(in_shape), hidden, activation,
                                                  batch_norm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


class MLPDecoder(nn.Module):
    """Latent code -> parameter maps of shape (B, n_params, *out_shape).

    With ``variance_hidden`` the maps after the first (a Gaussian's variance) come from a
    stack of their own, as in Brian Keng's SVHN model ("A Variational Autoencoder on the
    SVHN dataset": separate dense stacks for the mean and the variance): the variance then
    cannot crowd the mean out of a shared last hidden layer.
    """

    def __init__(self, latent_dim: int, out_shape: tuple[int, ...], n_params: int,
                 hidden: list[int], activation: str = "relu", batch_norm: bool = False,
                 dropout: float = 0.0, init_bias: dict[int, float] | None = None,
                 variance_hidden: list[int] | None = None):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.n_params = n_params
        size = math.prod(out_shape)
        self.body, width = mlp_layers(latent_dim, hidden, activation, batch_norm, dropout)
        separate = variance_hidden is not None and n_params > 1
        self.head = nn.Linear(width, (1 if separate else n_params) * size)
        if separate:
            self.variance_body, v_width = mlp_layers(latent_dim, variance_hidden, activation, batch_norm, dropout)
            self.variance_head = nn.Linear(v_width, (n_params - 1) * size)
        heads = [self.head] + ([self.variance_head] if separate else [])
        with torch.no_grad():  # e.g. the log-variance map's starting value
            for index, value in (init_bias or {}).items():
                head, first = (heads[-1], 1) if separate and index > 0 else (self.head, 0)
                head.bias[(index - first) * size:(index - first + 1) * size] = value

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(z))
        if hasattr(self, "variance_head"):
            out = torch.cat([out, self.variance_head(self.variance_body(z))], 1)
        return out.view(z.shape[0], self.n_params, *self.out_shape)
