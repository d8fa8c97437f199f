"""Convolutional encoder/decoder: exact output sizes for any input, layers, gradients, memory formats."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.errors import VaelabError
from vaelab.likelihoods import build_likelihood
from vaelab.nn.conv import ACTIVATIONS, ConvDecoder, ConvEncoder, ConvStack, activation_layer, conv_output_sizes

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 30, 30), (1, 28, 32), (3, 64, 64), (2, 9, 17)]
PATTERNS = [  # (kernels, strides)
    ([4, 4], [2, 2]),
    ([3, 3, 3], [2, 2, 2]),
    ([5, 3], [1, 2]),
    ([3, 4, 2], [2, 3, 1]),
    ([1, 2], [2, 2]),  # kernels smaller than or equal to strides skip pixels; sizes must still work out
]


def pair(shape, kernels, strides, dense=16, latent=5, n_params=2, **kw):
    channels = [6 + 2 * i for i in range(len(kernels))]
    stack = ConvStack(channels, kernels, strides, dense, **kw)
    enc = ConvEncoder(shape, stack)
    dec = ConvDecoder(latent, shape, n_params, stack)
    return enc, dec


@pytest.mark.parametrize("kernels, strides", PATTERNS, ids=[f"k{k}-s{s}" for k, s in PATTERNS])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_output_shapes(shape, kernels, strides):
    enc, dec = pair(shape, kernels, strides)
    x = torch.randn(2, *shape)
    assert enc(x).shape == (2, enc.out_features) == (2, 16)
    assert dec(torch.randn(2, 5)).shape == (2, 2, *shape)
    # with no dense layer the encoder hands over the flattened last feature map
    enc0, dec0 = pair(shape, kernels, strides, dense=0, n_params=1)
    c, h, w = enc0.feature_shape
    assert enc0.out_features == c * h * w
    assert enc0(x).shape == (2, c * h * w)
    assert dec0(torch.randn(2, 5)).shape == (2, 1, *shape)


def test_conv_output_sizes_by_hand():
    # 28 -(k4,s2,p1)-> 14 -> 7 ; 30 -(k3,s2,p1)-> 15 -> 8 ; 32 -(k5,s3,p2)-> 11
    assert conv_output_sizes((28, 30), [4, 4], [2, 2]) == [(28, 30), (14, 15), (7, 7)]
    assert conv_output_sizes((30, 32), [3, 3], [2, 2]) == [(30, 32), (15, 16), (8, 8)]
    assert conv_output_sizes((32, 32), [5], [3]) == [(32, 32), (11, 11)]


def test_mnist_conv_parameter_count():
    """channels [64, 64], kernels [4, 4], strides [2, 2], dense 256, latent 32 on 1x28x28."""
    enc = ConvEncoder((1, 28, 28), ConvStack([64, 64], [4, 4], [2, 2], 256))
    dec = ConvDecoder(32, (1, 28, 28), 1, ConvStack([64, 64], [4, 4], [2, 2], 256))
    flat = 64 * 7 * 7  # 28 -> 14 -> 7
    enc_expected = (
        (1 * 64 * 4 * 4 + 64)  # conv 1 -> 64
        + (64 * 64 * 4 * 4 + 64)  # conv 64 -> 64
        + (flat * 256 + 256)  # dense
    )
    dec_expected = (
        (32 * 256 + 256)  # latent -> dense
        + (256 * flat + flat)  # dense -> 64x7x7 feature map
        + (64 * 64 * 4 * 4 + 64)  # deconv 64 -> 64
        + (64 * 1 * 4 * 4 + 1)  # deconv 64 -> n_params * C = 1
    )
    assert sum(p.numel() for p in enc.parameters()) == enc_expected == 869_760
    assert sum(p.numel() for p in dec.parameters()) == dec_expected == 881_025


def test_init_bias_sets_the_final_layer_per_param_map():
    dec = ConvDecoder(4, (3, 10, 12), 2, ConvStack([8], [3], [2], 0), init_bias={1: -3.5})
    bias = dec.final.bias.detach()
    assert bias.shape == (6,)
    assert torch.all(bias[3:] == -3.5)
    assert not torch.all(bias[:3] == -3.5)
    # the map that bias belongs to comes out of forward as params[:, 1]: with zero weights, all of it
    with torch.no_grad():
        dec.final.weight.zero_()
    out = dec(torch.randn(2, 4))
    assert torch.all(out[:, 1] == -3.5)


def test_init_bias_from_a_likelihood():
    lik = build_likelihood("gaussian", (1, 28, 28), variance="learned-logvar", logvar_init_bias=-2.0)
    dec = ConvDecoder(8, (1, 28, 28), lik.n_params, ConvStack([16, 16], [4, 4], [2, 2], 32), init_bias=lik.init_bias())
    assert torch.all(dec.final.bias[1] == -2.0)
    assert lik.log_prob(dec(torch.randn(3, 8)), torch.rand(3, 1, 28, 28)).shape == (3,)


def test_state_dict_has_no_duplicate_entries():
    dec = ConvDecoder(4, (1, 8, 8), 1, ConvStack([4], [3], [2], 0))
    keys = list(dec.state_dict())
    assert len(keys) == len({id(t) for t in dec.state_dict().values()})
    assert not any(k.startswith("final.") for k in keys)


def count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_batch_norm_and_dropout_layers_present_when_asked():
    plain_enc, plain_dec = pair((1, 16, 16), [3, 3], [2, 2])
    for m in (plain_enc, plain_dec):
        assert count(m, nn.BatchNorm2d) == count(m, nn.BatchNorm1d) == count(m, nn.Dropout) == 0
    enc, dec = pair((1, 16, 16), [3, 3], [2, 2], batch_norm=True, dropout=0.25)
    assert count(enc, nn.BatchNorm2d) == 2 and count(enc, nn.BatchNorm1d) == 1 and count(enc, nn.Dropout) == 3
    # decoder: two dense-side layers and one hidden deconv; never after the output layer
    assert count(dec, nn.BatchNorm1d) == 2 and count(dec, nn.BatchNorm2d) == 1 and count(dec, nn.Dropout) == 3
    assert all(m.p == 0.25 for m in dec.modules() if isinstance(m, nn.Dropout))
    assert isinstance(dec.deconvs[-1], nn.ConvTranspose2d)
    # order within a block: layer -> batch norm -> activation -> dropout
    kinds = [type(m) for m in enc.convs[:4]]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout]


@pytest.mark.parametrize("batch_norm, dropout", [(False, 0.0), (True, 0.1)])
def test_gradient_reaches_every_parameter(batch_norm, dropout):
    enc, dec = pair((3, 15, 13), [3, 4], [2, 2], batch_norm=batch_norm, dropout=dropout, activation="elu")
    head = nn.Linear(enc.out_features, 5)
    x = torch.randn(4, 3, 15, 13, generator=torch.Generator().manual_seed(0))
    loss = (dec(head(enc(x))) ** 2).mean()
    loss.backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("batch_norm", [False, True])
def test_channels_last_matches_contiguous(batch_norm):
    torch.manual_seed(0)
    enc, dec = pair((3, 30, 26), [3, 4, 3], [2, 2, 1], batch_norm=batch_norm, dropout=0.2)
    x = torch.randn(3, 3, 30, 26)
    z = torch.randn(3, 5)
    if batch_norm:  # give the running statistics something other than their defaults
        enc.train(), dec.train()
        enc(x), dec(z)
    enc.eval(), dec.eval()
    with torch.no_grad():
        ref_h, ref_out = enc(x), dec(z)
        enc.to(memory_format=torch.channels_last)
        dec.to(memory_format=torch.channels_last)
        h = enc(x.contiguous(memory_format=torch.channels_last))
        out = dec(z)
    torch.testing.assert_close(h, ref_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert out.shape == (3, 2, 3, 30, 26)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_layer_by_name(name):
    layer = activation_layer(name)
    assert isinstance(layer, nn.Module)
    assert layer(torch.randn(3)).shape == (3,)
    assert activation_layer(name) is not layer  # fresh module each time


def test_unknown_activation_lists_choices():
    with pytest.raises(VaelabError, match="relu, leaky_relu, elu, tanh, softplus, gelu"):
        activation_layer("swish")
    with pytest.raises(VaelabError, match="swish"):
        ConvEncoder((1, 8, 8), ConvStack([4], [3], [2], 0, activation="swish"))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"channels": [8, 8], "kernels": [3], "strides": [2, 2]}, "lengths"),
        ({"channels": [], "kernels": [], "strides": []}, "at least one"),
        ({"channels": [8, 0], "kernels": [3, 3], "strides": [2, 2]}, "channels"),
        ({"channels": [8], "kernels": [0], "strides": [2]}, "kernels"),
        ({"channels": [8], "kernels": [3], "strides": [0]}, "strides"),
        ({"channels": [8, 8, 8], "kernels": [4, 4, 4], "strides": [2, 2, 2]}, "below 1 pixel"),
        ({"dense": -1}, "dense"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_settings_raise(kwargs, fragment):
    settings = {"channels": [8], "kernels": [3], "strides": [2], "dense": 0, **kwargs}
    for build in (
        lambda: ConvEncoder((1, 4, 4), ConvStack(**settings)),
        lambda: ConvDecoder(3, (1, 4, 4), 1, ConvStack(**settings)),
    ):
        with pytest.raises(VaelabError, match=fragment) as info:
            build()
        assert "\n" not in str(info.value)


def test_decoder_rejects_bad_counts_and_init_bias():
    with pytest.raises(VaelabError, match="latent_dim"):
        ConvDecoder(0, (1, 8, 8), 1, ConvStack([4], [3], [2], 0))
    with pytest.raises(VaelabError, match="n_params"):
        ConvDecoder(3, (1, 8, 8), 0, ConvStack([4], [3], [2], 0))
    with pytest.raises(VaelabError, match="param map 2"):
        ConvDecoder(3, (1, 8, 8), 2, ConvStack([4], [3], [2], 0), init_bias={2: 0.0})
    with pytest.raises(VaelabError, match="in_shape"):
        ConvEncoder((28, 28), ConvStack([4], [3], [2], 0))
