"""A small residual conv encoder and decoder around a spatial latent, for colour images.

The encoder halves the image twice (32x32 -> 8x8) with residual blocks at each scale and
ends in a 1x1 conv that gives the posterior's means and log-variances as maps: z is a
(latent_dim / positions)-channel map over the (H/4) x (W/4) positions, flattened in
(C, H, W) order. Local codes carry far more information per training step than one
global vector through a dense layer, which is what a discretized-likelihood bound rewards.
The decoder mirrors it with transposed convs and ends in a 1x1 conv to the likelihood's
parameter maps.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from ..errors import VaelabError
from .init import he_init
from .layers import activation_layer

__all__ = ["ResNetDecoder", "ResNetEncoder", "latent_grid"]

_HALVINGS = 2  # 32x32 images -> an 8x8 latent grid


def latent_grid(shape, latent_dim: int) -> tuple[int, int, int]:
    """(channels, H/4, W/4) of the latent map for images of ``shape`` (C, H, W); a clear error
    where the sides or ``latent_dim`` do not divide."""
    if len(shape) != 3:
        raise VaelabError(f"model.encoder/decoder=resnet needs images (C, H, W), but the data are vectors of shape "
                          f"{tuple(shape)}")
    _, h, w = shape
    step = 2**_HALVINGS
    if h % step or w % step:
        raise VaelabError(f"the resnet networks halve the image {_HALVINGS} times, so its sides must be multiples of "
                          f"{step}, got {h}x{w}; set data.image_size to one (e.g. 32)")
    positions = (h // step) * (w // step)
    if latent_dim % positions:
        raise VaelabError(f"the resnet latent is a map over {h // step}x{w // step} = {positions} positions, so "
                          f"model.latent_dim must be a multiple of {positions}, got {latent_dim}; "
                          f"e.g. model.latent_dim={positions * 16}")
    return latent_dim // positions, h // step, w // step


def _check(width, blocks) -> None:
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise VaelabError(f"model.res_width must be an integer >= 1, got {width!r}")
    if isinstance(blocks, bool) or not isinstance(blocks, numbers.Integral) or blocks < 0:
        raise VaelabError(f"model.res_blocks must be an integer >= 0, got {blocks!r}")


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))), 3x3 convs that keep the width."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        self.body = nn.Sequential(activation_layer(activation), nn.Conv2d(width, width, 3, padding=1),
                                  activation_layer(activation), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _blocks(n: int, width: int, activation: str) -> list[nn.Module]:
    return [ResBlock(width, activation) for _ in range(n)]


def _quiet_residuals(network: nn.Module) -> None:
    """Each block's last conv starts small, so at initialisation every block is nearly the
    identity and the deep stack passes the signal (and gradients) through unchanged."""
    with torch.no_grad():
        for block in network.modules():
            if isinstance(block, ResBlock):
                block.body[-1].weight.mul_(0.1)


class ResNetEncoder(nn.Module):
    """(B, C, H, W) -> (B, 2 * latent_dim): the posterior's mean maps then log-variance maps.

    ``gives_posterior``: its output is the posterior's parameters (the VAE adds no dense head).
    """

    gives_posterior = True

    def __init__(self, in_shape, latent_dim: int, width: int = 64, blocks: int = 2, activation: str = "relu"):
        super().__init__()
        _check(width, blocks)
        z_channels, _, _ = latent_grid(in_shape, latent_dim)
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], width, 3, padding=1)]
        for _ in range(_HALVINGS):
            layers += [activation_layer(activation), nn.Conv2d(width, width, 3, stride=2, padding=1),
                       *_blocks(blocks, width, activation)]
        layers += [activation_layer(activation), nn.Conv2d(width, 2 * z_channels, 1)]
        self.net = nn.Sequential(*layers)
        self.out_features = 2 * latent_dim
        he_init(self, activation, last=layers[-1])
        _quiet_residuals(self)

    def forward(self, x: Tensor) -> Tensor:
        # mean maps first, then log-variance maps: the VAE splits the flat vector in halves
        return self.net(x).flatten(1)


class ResNetDecoder(nn.Module):
    """(B, latent_dim) -> (B, n_params, C, H, W); ``init_bias`` {map index: value} sets that
    map's final bias."""

    def __init__(self, latent_dim: int, out_shape, n_params: int, width: int = 64, blocks: int = 2,
                 activation: str = "relu", init_bias: dict[int, float] | None = None):
        super().__init__()
        _check(width, blocks)
        self.grid = latent_grid(out_shape, latent_dim)
        self.out_shape = tuple(int(d) for d in out_shape)
        self.n_params = int(n_params)
        c = self.out_shape[0]
        layers: list[nn.Module] = [nn.Conv2d(self.grid[0], width, 3, padding=1)]
        for _ in range(_HALVINGS):
            layers += [*_blocks(blocks, width, activation), activation_layer(activation),
                       nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)]
        layers += [activation_layer(activation), nn.Conv2d(width, self.n_params * c, 1)]
        self.net = nn.Sequential(*layers)
        he_init(self, activation, last=layers[-1])
        _quiet_residuals(self)
        for index, value in (init_bias or {}).items():
            with torch.no_grad():
                layers[-1].bias[index * c:(index + 1) * c] = float(value)

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z.view(z.shape[0], *self.grid))
        return out.unflatten(1, (self.n_params, self.out_shape[0]))
