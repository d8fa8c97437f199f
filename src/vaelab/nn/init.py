"""He (Kaiming) initialisation for the convolutional networks.

PyTorch's default init (uniform, variance 1/(3 fan-in)) shrinks the signal by about
sqrt(6) at every ReLU layer. Through the conv encoder (two convs, a dense layer, the
posterior head) the posterior means then barely differ between images, the decoder learns
the mean image first, and on some seeds the encoder never recovers: a dead encoder that
fails even with KL weight 0 (seen on svhn-conv-gaussian before this init). He et al. 2015's variance 2/fan-in keeps the
signal's scale through ReLU layers. Biases start at zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: activations for which He's gain sqrt(2) is right; the others keep a gain of 1
_RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu")


def _fan_in(layer: nn.Module) -> float:
    """Inputs feeding one output unit. A transposed conv of stride s adds up about
    in_channels * (k / s)^2 inputs per output pixel, not in_channels * k^2."""
    if isinstance(layer, nn.ConvTranspose2d):
        k_h, k_w = layer.kernel_size
        s_h, s_w = layer.stride
        return layer.in_channels * max(k_h / s_h, 1.0) * max(k_w / s_w, 1.0)
    if isinstance(layer, nn.Conv2d):
        k_h, k_w = layer.kernel_size
        return layer.in_channels * k_h * k_w
    return layer.in_features


@torch.no_grad()
def he_init(network: nn.Module, activation: str, last: nn.Module | None = None) -> None:
    """Re-initialise every Linear, Conv2d and ConvTranspose2d of ``network``.

    ``last`` (the output layer, followed by no activation) gets gain 1.
    """
    gain = math.sqrt(2.0) if activation in _RELU_LIKE else 1.0
    for layer in network.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            g = 1.0 if layer is last else gain
            layer.weight.normal_(0.0, g / math.sqrt(_fan_in(layer)))
            if layer.bias is not None:
                layer.bias.zero_()
