"""Activation functions by their config name, shared by the MLP and convolutional networks."""

from __future__ import annotations

from torch import nn

from ..errors import VaelabError

_FACTORIES = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}
ACTIVATIONS = tuple(_FACTORIES)


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of ``ACTIVATIONS``)."""
    try:
        return _FACTORIES[name]()
    except (KeyError, TypeError):
        raise VaelabError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}") from None
