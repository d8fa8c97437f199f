"""Encoder and decoder networks, built from a ModelConfig for any data shape."""

from __future__ import annotations

from torch import nn

from ..errors import VaelabError
from .conv import ConvDecoder, ConvEncoder, ConvStack
from .mlp import MLPDecoder, MLPEncoder
from .resnet import ResNetDecoder, ResNetEncoder


def conv_stack(m) -> ConvStack:
    """The conv layers a ModelConfig asks for."""
    return ConvStack(m.conv_channels, m.conv_kernels, m.conv_strides, m.conv_dense, m.activation,
                     m.batch_norm, m.dropout)


def build_encoder(m, in_shape: tuple[int, ...]) -> nn.Module:
    """An encoder whose ``out_features`` feed the posterior head (or, where it ``gives_posterior``,
    are the posterior's means and log-variances themselves)."""
    if m.encoder == "mlp":
        return MLPEncoder(in_shape, m.hidden, m.activation, m.batch_norm, m.dropout)
    if m.encoder == "resnet":
        return ResNetEncoder(in_shape, m.latent_dim, m.res_width, m.res_blocks, m.activation)
    if len(in_shape) != 3:
        raise VaelabError(f"model.encoder=conv needs images (C, H, W), but the data are vectors of shape {in_shape}")
    return ConvEncoder(in_shape, conv_stack(m))


def build_decoder(m, out_shape: tuple[int, ...], n_params: int,
                  init_bias: dict[int, float] | None = None) -> nn.Module:
    """A decoder producing parameter maps of shape (B, n_params, *out_shape)."""
    if m.decoder == "mlp":
        hidden = m.decoder_hidden if m.decoder_hidden is not None else list(reversed(m.hidden))
        return MLPDecoder(m.latent_dim, out_shape, n_params, hidden, m.activation, m.batch_norm,
                          m.dropout, init_bias, m.variance_hidden)
    if m.decoder == "resnet":
        return ResNetDecoder(m.latent_dim, out_shape, n_params, m.res_width, m.res_blocks, m.activation, init_bias)
    if len(out_shape) != 3:
        raise VaelabError(f"model.decoder=conv needs images (C, H, W), but the data are vectors of shape {out_shape}")
    return ConvDecoder(m.latent_dim, out_shape, n_params, conv_stack(m), init_bias)


__all__ = ["build_encoder", "build_decoder", "conv_stack", "MLPEncoder", "MLPDecoder", "ConvEncoder",
           "ConvDecoder", "ConvStack", "ResNetEncoder", "ResNetDecoder"]
