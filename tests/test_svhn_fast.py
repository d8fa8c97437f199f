"""svhn-fast, the colour counterpart of mnist-fast: its residual networks around a spatial
latent, and a smoke run of the preset (and of its GPU variant's settings, on CPU) that trains
a step and evaluates to a finite, valid bits/dim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vaelab
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.model import VAE
from vaelab.nn.resnet import ResNetDecoder, ResNetEncoder
from vaelab.presets import load_preset
from vaelab.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """48 PNGs of 32x32 RGB: colour gradients plus noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colour") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for i in range(48):
        w = rng.random((3, 3))
        image = np.clip((w[:, 0, None, None] * xx + w[:, 1, None, None] * yy + w[:, 2, None, None]) / 3
                        + rng.normal(0, 0.05, (3, 32, 32)), 0, 1)
        Image.fromarray((image.transpose(1, 2, 0) * 255).astype(np.uint8), "RGB").save(root / f"{i:03d}.png")
    return root


def smoke(name: str, folder, *overrides: str) -> Config:
    config = load_preset(name)
    config.apply_overrides([f"data.name=folder:{folder}", "data.channels=3", "data.image_size=32",
                            "data.val_fraction=0.25", "train.epochs=1", "train.batch_size=12",
                            "model.res_width=16", "model.res_blocks=1", *overrides])
    return config.validate()


@pytest.mark.parametrize("name", ["svhn-fast", "svhn-fast-gpu"])
def test_preset_trains_and_evaluates_to_a_finite_valid_bits_per_dim(name, colour_folder, tmp_path):
    # the GPU variant's bf16 autocast, channels_last and batch run on CPU here at smoke size
    config = smoke(name, colour_folder, "train.device=cpu")
    out = train(config, tmp_path / "run", progress=False, callbacks=[])
    run = vaelab.load_run(out)
    result = run.evaluate("val", iw_samples=3)
    assert result["bits_per_dim_method"] and math.isfinite(result["bits_per_dim"])
    assert result["bits_per_dim"] > 0  # a code length from a pmf over the 8-bit pixels
    assert result["nll_iw"] <= -result["elbo"] + 1e-3 * abs(result["elbo"])
    assert run.sample(4).shape == (4, 3, 32, 32)
    assert run.reconstruct(run.images("val")[0][:2]).shape == (2, 3, 32, 32)


def test_gpu_variant_is_the_preset_with_a_gpu_s_settings():
    fast, gpu = load_preset("svhn-fast"), load_preset("svhn-fast-gpu")
    assert gpu.model == fast.model
    assert gpu.train.batch_size > fast.train.batch_size and gpu.train.autocast == "bf16"
    assert gpu.train.channels_last in ("auto", "on")


def test_full_size_preset_network_on_the_real_shape_steps():
    config = load_preset("svhn-fast").validate()
    torch.manual_seed(0)
    model = VAE(config.model, (3, 32, 32))
    assert isinstance(model.posterior_head, torch.nn.Identity)  # the encoder's maps are the posterior
    x = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    loss = model.loss(x).loss
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_resnet_shapes_and_the_latent_map():
    enc = ResNetEncoder((3, 32, 32), latent_dim=8 * 8 * 4, width=8, blocks=1)
    h = enc(torch.rand(5, 3, 32, 32))
    assert h.shape == (5, 2 * 256) and enc.out_features == 512
    dec = ResNetDecoder(256, (3, 32, 32), n_params=7, width=8, blocks=2, init_bias={2: -3.0})
    out = dec(torch.randn(5, 256))
    assert out.shape == (5, 7, 3, 32, 32)
    assert torch.all(dec.net[-1].bias.view(7, 3)[2] == -3.0)
    # the latent is local: one position's code moves the output near it, not across the image
    # (without residual blocks, whose 3x3 convs widen the reach)
    dec = ResNetDecoder(256, (3, 32, 32), n_params=7, width=8, blocks=0)
    z = torch.zeros(1, 256)
    base = dec(z)
    z.view(4, 8, 8)[:, 0, 0] = 3.0
    change = (dec(z) - base).abs().sum((0, 1, 2))
    assert change[:8, :8].sum() > 0 and change[16:, 16:].sum() == 0
    # other sizes whose sides are multiples of 4, grey too
    assert ResNetDecoder(49 * 2, (1, 28, 28), 1, width=4, blocks=0)(torch.randn(2, 98)).shape == (2, 1, 1, 28, 28)


@pytest.mark.parametrize("overrides, fragment", [
    (["model.latent_dim=100"], "multiple of 64"),
    (["data.image_size=30"], "multiples of 4"),
    (["model.res_width=0"], "res_width"),
    (["model.res_blocks=-1"], "res_blocks"),
    (["model.family=ladder"], "model.family=vae"),
    (["model.batch_norm=true"], "batch_norm"),
    (["data.channels=1"], "RGB"),
])
def test_bad_settings_are_one_clear_line(overrides, fragment, colour_folder, tmp_path):
    config = load_preset("svhn-fast")
    with pytest.raises(VaelabError, match=fragment) as info:
        config.apply_overrides([f"data.name=folder:{colour_folder}", "data.channels=3", "data.image_size=32",
                                "train.epochs=1", *overrides])
        train(config.validate(), tmp_path / "run", progress=False, callbacks=[])
    assert "\n" not in str(info.value)
