"""Every preset: it names its source, holds the experiment's settings, and trains at smoke size.

Smoke size: a few batches (data.limit) for one epoch, on the built-in MNIST sample or, for
the SVHN presets, on a folder of generated 32x32 RGB images written to a temporary
directory (SVHN's files are not present in tests). The conv presets also run on the other
image shape, and every preset's full-size network is built for its real data shape.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vaelab
from vaelab.config import Config
from vaelab.model import VAE
from vaelab.families import build_model
from vaelab.presets import load_preset, preset_info, preset_names
from vaelab.training.trainer import train

FOLDER_OVERRIDE = "--set data.name=folder:PATH --set data.channels=3 --set data.image_size=32"
EXPERIMENTS = ["svhn-pca", "svhn-kingma-m1", "svhn-mlp-bernoulli", "svhn-conv-bernoulli", "svhn-conv-gaussian",
               "mnist-conv-annealed", "mnist-conv-ae", "mnist-lowcap", "mnist-l2", "mnist-mlp"]
CONV = [name for name in EXPERIMENTS if load_preset(name).model.encoder == "conv"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """72 PNG files of 32x32 RGB: smooth colour gradients plus noise, in two class folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for i in range(72):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        weights = rng.random((3, 3))
        image = weights[:, 0, None, None] * xx + weights[:, 1, None, None] * yy + weights[:, 2, None, None]
        image = np.clip(image / 3 + rng.normal(0, 0.05, image.shape), 0, 1)
        Image.fromarray((image.transpose(1, 2, 0) * 255).astype(np.uint8), "RGB").save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def m1_runs(colour_folder, tmp_path_factory):
    """A tiny trained VAE per image shape: the M1 of the M1+M2 presets."""
    runs = {}
    for shape in ("grey28", "rgb32"):
        config = Config()
        data = ([f"data.name=folder:{colour_folder}", "data.channels=3", "data.image_size=32", "data.limit=64"]
                if shape == "rgb32" else ["data.name=mnist-sample", "data.limit=140"])
        config.apply_overrides(data + ["model.latent_dim=4", "model.hidden=[16]", "train.epochs=1"])
        runs[shape] = train(config.validate(), tmp_path_factory.mktemp(f"m1-{shape}") / "run", progress=False,
                            callbacks=[])
    return runs


def smoke_config(name: str, shape: str, colour_folder, m1_runs=None) -> Config:
    """The preset, one epoch of one or two batches; nothing else changed but the data (and for
    M1+M2 presets, a tiny M1 to take codes from)."""
    config = load_preset(name)
    if config.data.transform == "m1":
        config.apply_overrides([f"data.m1_run={m1_runs[shape]}"])
    if shape == "rgb32":
        config.apply_overrides([f"data.name=folder:{colour_folder}", "data.channels=3", "data.image_size=32",
                                "data.limit=64", "data.val_fraction=0.1"])
    else:
        config.apply_overrides(["data.name=mnist-sample", "data.limit=140"])
    if config.data.transform == "pca":
        config.apply_overrides(["data.pca_components=16"])  # a PCA needs more fit images than components
    if name == "svhn-pca":
        # five layers with batch norm and dropout as in the preset, but 256 units wide: at 2048 each
        # checkpoint is ~400 MB to write and hash (seconds); the full width trains a step in
        # test_full_size_network_trains_a_step_on_the_real_shape
        config.apply_overrides(["model.hidden=256,256,256,256,256"])
    if config.data.labelled:  # a few labels of the small smoke data
        config.apply_overrides(["data.labelled=20"])
    config.apply_overrides(["train.epochs=1"])
    return config.validate()


def default_shape(name: str) -> str:
    return "rgb32" if name.startswith("svhn") else "grey28"


CASES = [(name, default_shape(name)) for name in preset_names()]
CASES += [(name, "grey28" if default_shape(name) == "rgb32" else "rgb32") for name in CONV]


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_preset_trains_at_smoke_size(name, shape, colour_folder, m1_runs, tmp_path):
    config = smoke_config(name, shape, colour_folder, m1_runs)
    out = train(config, tmp_path / "run", progress=False, callbacks=[])
    run = vaelab.load_run(out)
    image_shape = (3, 32, 32) if shape == "rgb32" else (1, 28, 28)
    assert run.image_shape == image_shape
    # the preset's own network was trained, not a default one
    saved = Config.load(out / "config.json")
    assert saved.model == config.model and saved.train.batch_size == config.train.batch_size
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1] and math.isfinite(rows[0]["train_loss"])
    result = run.evaluate("val", iw_samples=2)
    assert math.isfinite(result["elbo"]) and math.isfinite(result["nll_iw"])
    samples = run.sample(4)
    assert samples.shape == (4, *image_shape)
    assert 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0


@pytest.mark.parametrize("name", preset_names())
def test_preset_names_its_source_and_how_to_run_it_on_a_folder(name):
    info = preset_info(name)
    assert len(info["description"]) > 40 and len(info["source"]) > 40
    config = load_preset(name)
    if name.startswith("svhn"):
        assert config.data.name == "svhn"
        assert FOLDER_OVERRIDE in info["description"]


FAMILY_PRESETS = ["mnist-vamp", "mnist-iaf", "mnist-hvae-vamp", "mnist-ladder", "svhn-ladder", "mnist-m2"]


@pytest.mark.parametrize("name", EXPERIMENTS + FAMILY_PRESETS)
def test_full_size_network_trains_a_step_on_the_real_shape(name):
    """The preset's full-size network on its real data shape: one Adam step, finite, loss moves."""
    config = load_preset(name).validate()
    image_shape = (3, 32, 32) if name.startswith("svhn") else (1, 28, 28)
    event = (config.data.pca_components,) if config.data.transform == "pca" else image_shape
    torch.manual_seed(0)
    model = build_model(config.model, event)
    if config.data.transform == "pca":
        x = torch.randn(4, *event)
    elif config.data.transform.startswith("binarize"):
        x = torch.bernoulli(torch.full((4, *event), 0.3))
    else:
        x = torch.rand(4, *event)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    generator = torch.Generator().manual_seed(1)
    loss = model.loss(x, beta=config.train.beta, generator=generator).loss
    loss.backward()
    first = loss.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    generator.manual_seed(1)
    with torch.no_grad():
        second = model.loss(x, beta=config.train.beta, generator=generator).loss.item()
    assert math.isfinite(first) and second != first


def test_presets_hold_the_write_ups_settings():
    pca = load_preset("svhn-pca")
    assert (pca.data.transform, pca.model.hidden, pca.model.batch_norm, pca.model.dropout) == \
        ("pca", [2048] * 5, True, 0.2)
    assert 500 <= pca.data.pca_components <= 1000 and pca.data.pca_fit_images == 10000
    assert (pca.model.latent_dim, pca.model.likelihood, pca.model.variance) == (512, "gaussian", "relu")
    assert pca.model.variance_eps > 0
    assert (pca.train.batch_size, pca.train.lr, pca.train.early_stopping) == (1000, 1e-4, "train")

    m1 = load_preset("svhn-kingma-m1")
    assert (m1.data.pca_components, m1.data.pca_whiten, m1.data.pca_fit_images) == (600, True, 10000)
    assert (m1.model.hidden, m1.model.latent_dim, m1.model.variance) == ([500, 500], 300, "learned-logvar")
    assert (m1.train.batch_size, m1.train.lr) == (5000, 3e-4)

    for name in ("svhn-conv-bernoulli", "svhn-conv-gaussian"):
        conv = load_preset(name).model
        assert (conv.encoder, conv.conv_channels, conv.decoder) == ("conv", [16], "mlp")
    assert load_preset("svhn-conv-gaussian").model.sigmoid_mean
    assert load_preset("svhn-mlp-bernoulli").model.likelihood == "bernoulli"

    annealed, ae = load_preset("mnist-conv-annealed"), load_preset("mnist-conv-ae")
    for c in (annealed, ae):
        m = c.model
        assert (m.conv_channels, m.conv_kernels, m.conv_strides, m.conv_dense, m.latent_dim) == \
            ([64, 64], [4, 4], [2, 2], 256, 32)
        assert c.train.batch_size == 64
    assert annealed.train.kl_schedule == "ae-then-anneal" and annealed.train.beta == 1.0
    assert ae.train.beta == 0.0 and ae.train.kl_schedule == "constant"

    low = load_preset("mnist-lowcap").model
    assert (low.hidden, low.decoder_hidden) == ([500, 500], [500])
    assert load_preset("mnist-l2").model.latent_dim == 2


def test_mnist_l2_is_na_s_weighting_in_nats_per_image():
    # Na: tf.nn.l2_loss (half the squared error, summed over the batch) + the KL averaged over the
    # batch; times B per image, that is the negative ELBO of N(x; mean, I / B)
    config = load_preset("mnist-l2")
    batch = config.train.batch_size
    model = VAE(config.model, (1, 28, 28))
    params = torch.randn(3, 1, 1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    half_squared = 0.5 * ((x - torch.sigmoid(params[:, 0])) ** 2).flatten(1).sum(1)
    constant = 0.5 * 784 * math.log(2 * math.pi / batch)
    torch.testing.assert_close(-model.likelihood.log_prob(params, x), batch * half_squared + constant)


@pytest.mark.parametrize("name", ["mnist-conv-mse", "mnist-conv-mse-ae", "mnist-conv-mse-annealed",
                                  "mnist-lowcap-mse"])
def test_the_mse_presets_reconstruction_term_is_the_per_pixel_mean_squared_error(name):
    # the project page's loss: a mean over pixels of the squared error, beside a KL summed over latents
    model = VAE(load_preset(name).model, (1, 28, 28))
    params = torch.randn(3, 1, 1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    mse = ((x - torch.sigmoid(params[:, 0])) ** 2).flatten(1).mean(1)
    constant = 392 * math.log(2 * math.pi * 392)  # (D/2) log(2 pi sigma^2), sigma^2 = D/2: 3,061.18 nats
    torch.testing.assert_close(-model.likelihood.log_prob(params, x), mse + constant)