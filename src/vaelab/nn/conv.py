"""Convolutional encoder and mirrored decoder that work for any input size (square or not, odd or even).

Every conv uses padding (k - 1) // 2, so a layer maps a side of n pixels to
floor((n + 2p - k) / s) + 1. The decoder undoes each layer with a transposed conv whose
output_padding is exactly the remainder the encoder's floor threw away, so it lands on the
original (H, W) whatever the sizes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import VaelabError
from .init import he_init
from .layers import ACTIVATIONS, activation_layer

__all__ = ["ACTIVATIONS", "ConvDecoder", "ConvEncoder", "ConvStack", "activation_layer", "conv_output_sizes"]


def _padding(kernel: int) -> int:
    return (kernel - 1) // 2


def conv_output_sizes(hw: tuple[int, int], kernels: list[int], strides: list[int]) -> list[tuple[int, int]]:
    """Spatial sizes before and after every conv: ``[(H, W), after layer 1, ...]``."""
    sizes = [tuple(hw)]
    for i, (k, s) in enumerate(zip(kernels, strides)):
        p = _padding(k)
        new = tuple((n + 2 * p - k) // s + 1 for n in sizes[-1])
        if min(new) < 1:
            raise VaelabError(
                f"conv layer {i + 1} (kernel {k}, stride {s}) shrinks a {sizes[-1][0]}x{sizes[-1][1]} map "
                f"below 1 pixel; use fewer layers, smaller strides or kernels"
            )
        sizes.append(new)
    return sizes


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class ConvStack:
    """The settings an encoder and its mirrored decoder share: one entry per conv layer in
    ``channels``/``kernels``/``strides`` (encoder order), a dense layer of ``dense`` units
    (0: none), and what follows every hidden layer."""

    channels: Sequence[int]
    kernels: Sequence[int]
    strides: Sequence[int]
    dense: int
    activation: str = "relu"
    batch_norm: bool = False
    dropout: float = 0.0

    def check(self, shape, shape_name: str) -> tuple[int, int, int]:
        """Validate the settings for images of ``shape`` (C, H, W) and return it as ints."""
        channels, kernels, strides, dense = self.channels, self.kernels, self.strides, self.dense
        if len(shape) != 3 or not all(_positive_int(d) for d in shape):
            raise VaelabError(f"{shape_name} must be (C, H, W) with positive ints, got {tuple(shape)!r}")
        if not (len(channels) == len(kernels) == len(strides)):
            raise VaelabError(
                f"channels, kernels and strides need one entry per conv layer, got lengths "
                f"{len(channels)}, {len(kernels)}, {len(strides)}; make them equal"
            )
        if len(channels) == 0:
            raise VaelabError(
                "a conv network needs at least one conv layer; give channels, kernels and strides one entry each or more"
            )
        for label, values in (("channels", channels), ("kernels", kernels), ("strides", strides)):
            if not all(_positive_int(v) for v in values):
                raise VaelabError(f"{label} must all be integers >= 1, got {list(values)}")
        if isinstance(dense, bool) or not isinstance(dense, numbers.Integral) or dense < 0:
            raise VaelabError(f"dense must be an integer >= 0 (0 means no dense layer), got {dense!r}")
        if self.activation not in ACTIVATIONS:
            raise VaelabError(f"unknown activation {self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if not (isinstance(self.dropout, numbers.Real) and 0.0 <= self.dropout < 1.0):
            raise VaelabError(f"dropout must be in [0, 1), got {self.dropout!r}")
        return tuple(int(d) for d in shape)

    @property
    def bias(self) -> bool:
        # a bias right before batch norm is cancelled by its mean subtraction
        return not self.batch_norm

    def post(self, n_features: int, norm: type[nn.Module]) -> list[nn.Module]:
        """What follows a hidden layer: [batch norm] -> activation -> [dropout]."""
        layers: list[nn.Module] = [norm(n_features)] if self.batch_norm else []
        layers.append(activation_layer(self.activation))
        if self.dropout > 0:
            layers.append(nn.Dropout(self.dropout))
        return layers


class _ConvNet(nn.Module):
    """What an encoder and its decoder both know of their images: the shape (C, H, W), the
    side lengths before and after every conv, and the last feature map."""

    def __init__(self, shape, stack: ConvStack, shape_name: str):
        super().__init__()
        self.stack = stack
        c, h, w = self.image_shape = stack.check(shape, shape_name)
        self.sizes = conv_output_sizes((h, w), stack.kernels, stack.strides)
        self.feature_shape = (stack.channels[-1], *self.sizes[-1])
        self.flat = math.prod(self.feature_shape)


class ConvEncoder(_ConvNet):
    """Strided convs -> flatten -> optional dense layer. Maps (B, C, H, W) to (B, out_features)."""

    def __init__(self, in_shape: tuple[int, int, int], stack: ConvStack):
        super().__init__(in_shape, stack, "in_shape")
        self.in_shape = self.image_shape
        c = self.image_shape[0]

        convs: list[nn.Module] = []
        c_in = c
        for c_out, k, s in zip(stack.channels, stack.kernels, stack.strides):
            convs.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=_padding(k), bias=stack.bias))
            convs += stack.post(c_out, nn.BatchNorm2d)
            c_in = c_out
        self.convs = nn.Sequential(*convs)

        if stack.dense > 0:
            self.dense = nn.Sequential(nn.Linear(self.flat, stack.dense, bias=stack.bias),
                                       *stack.post(stack.dense, nn.BatchNorm1d))
            self.out_features = int(stack.dense)
        else:
            self.dense = nn.Identity()
            self.out_features = self.flat
        he_init(self, stack.activation)

    def forward(self, x: Tensor) -> Tensor:
        # flatten copies channels_last maps into (C, H, W) order, so the dense layer sees the same layout
        return self.dense(self.convs(x).flatten(1))


class ConvDecoder(_ConvNet):
    """Mirror of :class:`ConvEncoder`: dense -> feature map -> transposed convs -> (B, n_params, C, H, W).

    Takes the encoder's :class:`ConvStack` (layers in encoder order) and walks it backwards;
    the last transposed conv outputs n_params * C channels, map ``i`` being channels
    ``i*C:(i+1)*C``. ``init_bias`` {map index: value} sets that map's final-layer bias.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: tuple[int, int, int],
        n_params: int,
        stack: ConvStack,
        init_bias: dict[int, float] | None = None,
    ):
        super().__init__(out_shape, stack, "out_shape")
        if not _positive_int(latent_dim):
            raise VaelabError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if not _positive_int(n_params):
            raise VaelabError(f"n_params must be an integer >= 1, got {n_params!r}")
        self.out_shape = self.image_shape
        c = self.image_shape[0]
        self.n_params = int(n_params)
        bias = stack.bias

        fc: list[nn.Module] = []
        n_in = latent_dim
        if stack.dense > 0:
            fc.append(nn.Linear(latent_dim, stack.dense, bias=bias))
            fc += stack.post(stack.dense, nn.BatchNorm1d)
            n_in = stack.dense
        fc += [nn.Linear(n_in, self.flat, bias=bias), *stack.post(self.flat, nn.BatchNorm1d)]
        self.fc = nn.Sequential(*fc)

        channels, kernels, strides = stack.channels, stack.kernels, stack.strides
        deconvs: list[nn.Module] = []
        for i in reversed(range(len(channels))):
            k, s = kernels[i], strides[i]
            h_out, w_out = self.sizes[i]  # this layer undoes encoder layer i, which read sizes[i]
            p = _padding(k)
            # the encoder's floor dropped (n + 2p - k) mod s pixels; put exactly those back
            output_padding = ((h_out + 2 * p - k) % s, (w_out + 2 * p - k) % s)
            last = i == 0
            c_in = channels[i]
            c_out = self.n_params * c if last else channels[i - 1]
            deconvs.append(
                nn.ConvTranspose2d(
                    c_in, c_out, k, stride=s, padding=p, output_padding=output_padding, bias=last or bias
                )
            )
            if not last:
                deconvs += stack.post(c_out, nn.BatchNorm2d)
        self.deconvs = nn.Sequential(*deconvs)
        he_init(self, stack.activation, last=self.final)
        if init_bias:
            self._apply_init_bias(init_bias)

    @property
    def final(self) -> nn.ConvTranspose2d:
        """The last transposed conv, whose channels are the parameter maps."""
        return self.deconvs[-1]

    def _apply_init_bias(self, init_bias: dict[int, float]) -> None:
        c = self.out_shape[0]
        with torch.no_grad():
            for index, value in init_bias.items():
                if not (isinstance(index, numbers.Integral) and 0 <= index < self.n_params):
                    raise VaelabError(
                        f"init_bias names param map {index!r} but the decoder has maps 0..{self.n_params - 1}; "
                        f"check n_params matches the likelihood"
                    )
                self.final.bias[index * c : (index + 1) * c] = float(value)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], *self.feature_shape)
        out = self.deconvs(h)
        # unflatten is a view for both contiguous and channels_last outputs
        return out.unflatten(1, (self.n_params, self.out_shape[0]))
