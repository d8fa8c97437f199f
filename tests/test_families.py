"""The contract every model family keeps (docs/architecture.md): built from a config, it
trains on real MNIST images, saves and reloads its run directory, its importance-weighted
bound is at least its ELBO and does not fall as K grows, it samples, and it resumes
bit-identically from a checkpoint written mid-epoch. Plus the VAE's own prior and flow
arithmetic against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

import vaelab
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.families import FAMILIES, build_model
from vaelab.latent.priors import MixtureOfGaussians
from vaelab.rundir.checkpoint import load_tensors
from vaelab.rundir.load import load_run

BASE = ["data.name=mnist-sample", "data.limit=1000", "data.val_fraction=0.2", "model.latent_dim=4",
        "model.hidden=[128]", "train.batch_size=50", "train.epochs=2", "train.device=cpu", "train.threads=1",
        "train.lr=0.003"]

#: every family, prior and posterior vaelab offers, as overrides of BASE
VARIANTS = {
    "vae": [],
    "vae-conv": ["model.encoder=conv", "model.decoder=conv", "model.conv_channels=[8,16]", "model.conv_dense=64"],
    "vae-mog": ["model.prior=mog", "model.prior_components=10"],
    "vae-vamp": ["model.prior=vamp", "model.prior_components=10"],
    "vae-iaf": ["model.flow_steps=2", "model.flow_hidden=[32]"],
    "vae-vamp-iaf": ["model.prior=vamp", "model.prior_components=10", "model.flow_steps=1", "model.flow_hidden=[32]"],
    "m2": ["model.family=m2", "data.labelled=50", "train.labelled_batch=20"],
    "ladder-mlp": ["model.family=ladder", "model.ladder_dims=[8]", "model.hidden=[128,64]"],
    "ladder-vamp": ["model.family=ladder", "model.ladder_dims=[8]", "model.hidden=[128,64]", "model.prior=vamp",
                    "model.prior_components=10"],
    "ladder-conv": ["model.family=ladder", "model.ladder_dims=[8]", "model.hidden=[128,64]", "model.encoder=conv",
                    "model.decoder=conv", "model.conv_channels=[8,16]", "model.conv_dense=64"],
}


def config_for(variant: str, *extra: str) -> Config:
    config = Config()
    config.apply_overrides(BASE + VARIANTS[variant] + list(extra))
    return config.validate()


def test_every_family_is_covered():
    families = {next((o.split("=")[1] for o in overrides if o.startswith("model.family=")), "vae")
                for overrides in VARIANTS.values()}
    assert families == set(FAMILIES)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def trained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    vaelab.fit(config_for(request.param), out, progress=False)
    return request.param, out


def test_trains_on_real_images_and_reloads_the_same_model(trained):
    variant, out = trained
    run = load_run(out)
    rows = run.metrics()
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_elbo"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["val_elbo"] > rows[0]["val_elbo"]  # it learns
    again = load_run(out)
    images, _ = run.images("test")
    x = run.transform.fixed(images[:32])
    first = run.model.elbo_terms(x, generator=torch.Generator().manual_seed(3))["elbo"]
    second = again.model.elbo_terms(x, generator=torch.Generator().manual_seed(3))["elbo"]
    assert torch.equal(first, second)
    assert run.description["family"] == run.config.model.family
    result = run.evaluate("test", iw_samples=5, limit=50)
    expected = "analytic" if variant in ("vae", "vae-conv", "m2", "ladder-mlp", "ladder-conv") else "monte-carlo"
    assert result["kl_method"] == expected
    assert math.isfinite(result["nll_iw"]) and result["nll_iw"] <= -result["elbo"] + 1.0


def test_iw_bound_is_at_least_the_elbo_and_does_not_fall_with_k(trained):
    _, out = trained
    run = load_run(out)
    images, _ = run.images("test")
    x = run.transform.fixed(images[:64])
    gen = torch.Generator().manual_seed(0)
    elbo = torch.stack([run.model.elbo_terms(x, generator=gen)["elbo"] for _ in range(20)]).mean(0)
    bounds = {k: torch.stack([run.model.log_likelihood(x, k, generator=gen) for _ in range(4)]) for k in (1, 10, 100)}
    means = {k: float(b.mean()) for k, b in bounds.items()}
    if not getattr(run.model, "uses_labels", False):  # (M2's K sum over classes is no ELBO at K = 1)
        # K = 1 is the ELBO itself (one sample): equal within Monte-Carlo error
        se = float(bounds[1].std(0).mean()) / math.sqrt(4 * 64) + float(elbo.std()) / math.sqrt(64 * 20)
        assert abs(means[1] - float(elbo.mean())) < 4 * se + 0.5
    assert means[10] > means[1] and means[100] > means[10] - 0.05
    assert means[100] >= float(elbo.mean())


def test_samples_and_reconstructions_are_images(trained):
    _, out = trained
    run = load_run(out)
    samples = run.sample(8, seed=1)
    assert samples.shape == (8, 1, 28, 28) and torch.isfinite(samples).all()
    assert 0 <= float(samples.min()) and float(samples.max()) <= 1
    assert torch.equal(samples, run.sample(8, seed=1))
    images, _ = run.images("test")
    assert run.reconstruct(images[:4]).shape == (4, 1, 28, 28)
    means, stds = run.encode(images[:10])
    assert means.shape == (10, run.config.model.latent_dim) and (stds > 0).all()


def test_codes_are_what_the_decoder_takes(trained):
    """Run.encode's means are the codes decode() takes: for the one-layer VAE (a flow's
    included) decoding them is the reconstruction."""
    variant, out = trained
    if not variant.startswith("vae"):
        return  # a hierarchy decodes its top layer with the lower ones at their prior means; M2 one class
    run = load_run(out)
    images, _ = run.images("test")
    means, _ = run.encode(images[:6])
    torch.testing.assert_close(run.decode(means), run.reconstruct(images[:6]))


class _StopAtStep:
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, beta):
        if step == self.step:
            trainer.stop_requested = "test stop"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_resumes_bit_identically_from_mid_epoch(variant, tmp_path):
    """(Conv weights train in channels_last: their restored Adam moments must be too, or the
    fused kernel pairs each weight with another's moments; vae-conv failed here before.)"""
    straight = vaelab.fit(config_for(variant), tmp_path / "straight", progress=False)
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        vaelab.fit(config_for(variant), stopped, progress=False, callbacks=[_StopAtStep(11)])
    vaelab.fit(config_for(variant), stopped, resume=True, progress=False)
    a, _ = load_tensors(straight / "model.safetensors")
    b, _ = load_tensors(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the arithmetic of priors and flows inside the VAE -------------------------------------------

def _model(*overrides: str):
    config = Config()
    config.apply_overrides(["model.latent_dim=3", "model.hidden=[16]", *overrides])
    torch.manual_seed(0)
    return build_model(config.validate().model, (1, 4, 4)).eval()


def test_mixture_prior_log_weights_match_torch_distributions():
    model = _model("model.prior=mog", "model.prior_components=4")
    x = torch.rand(5, 1, 4, 4).round()
    q, h = model._posterior(x)
    eps = torch.randn(7, 5, 3)
    log_w, recon = model._log_weights(x, q, h, 7, noise=eps)
    z = q.mean + q.std * eps
    prior: MixtureOfGaussians = model.prior
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=prior.logits),
        torch.distributions.Independent(torch.distributions.Normal(prior.means, torch.exp(0.5 * prior.logvars)), 1))
    posterior = torch.distributions.Independent(torch.distributions.Normal(q.mean, q.std), 1)
    expected = -recon + mixture.log_prob(z) - posterior.log_prob(z)
    assert torch.allclose(log_w, expected, atol=1e-4)


def test_flow_density_is_the_change_of_variables():
    """log q(z_T|x) = log q_0(z_0|x) - log|det dz_T/dz_0|, the determinant from autograd."""
    model = _model("model.flow_steps=2", "model.flow_hidden=[8]").double()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64).round()
    q, h = model._posterior(x)
    eps = torch.randn(1, 3, dtype=torch.float64)
    z, log_q = model._sample(q, h, eps)
    z0 = q.mean + q.std * eps
    jacobian = torch.autograd.functional.jacobian(lambda v: model.flow(v, h)[0], z0)[0, :, 0, :]
    base = torch.distributions.Independent(torch.distributions.Normal(q.mean, q.std), 1).log_prob(z0)
    assert torch.allclose(log_q, base - torch.linalg.slogdet(jacobian)[1], atol=1e-8)


def test_monte_carlo_kl_averages_to_the_analytic_one_for_a_standard_normal_prior():
    """A flow of zero steps and an N(0, I) prior: the one-sample estimate log q - log p is unbiased."""
    model = _model()
    x = torch.rand(4, 1, 4, 4).round()
    q, h = model._posterior(x)
    eps = torch.randn(20000, 4, 3)
    z, log_q = model._sample(q, h, eps)
    estimate = (log_q - model.prior.log_prob(z)).mean(0)
    assert torch.allclose(estimate, q.kl_per_dim().sum(-1), atol=0.05)


def test_old_run_configs_load_as_the_plain_vae():
    config = Config.from_dict({"model": {"latent_dim": 2}})
    assert (config.model.family, config.model.prior, config.model.flow_steps) == ("vae", "standard-normal", 0)
    assert build_model(config.validate().model, (1, 4, 4)).kl_method == "analytic"


@pytest.mark.parametrize("overrides, fragment", [
    (["model.family=hvae"], "model.family"),
    (["model.prior=gaussian-mixture"], "model.prior"),
    (["model.prior_components=0"], "model.prior_components"),
    (["model.flow_steps=-1"], "model.flow_steps"),
    (["model.family=ladder", "model.hidden=[64]", "model.ladder_dims=[8]"], "one model.hidden width per"),
    (["model.family=ladder", "model.hidden=[64,32]", "model.ladder_dims=[8]", "model.flow_steps=1"], "no flow"),
    (["model.prior=vamp", "data.transform=pca", "data.name=svhn"], "pseudo-inputs"),
    (["model.prior=vamp", "model.batch_norm=true"], "batch norm"),
])
def test_bad_family_settings_are_one_clear_error(overrides, fragment):
    config = Config()
    with pytest.raises(VaelabError, match=fragment) as info:
        config.apply_overrides(overrides)
        config.validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bf16_autocast_keeps_the_bounds_in_float32(variant):
    """Networks in bfloat16, distributions in float32: the loss and the IW bound stay float32
    and close to their float32 values."""
    config = config_for(variant)
    torch.manual_seed(0)
    model = build_model(config.model, (1, 28, 28))
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.2))
    labels = torch.tensor([-1] * 6 + [3, 5]) if getattr(model, "uses_labels", False) else None
    kwargs = {"labels": labels, "weights": (0.9, 0.1, 0.1)} if labels is not None else {}
    noise = torch.randn(8, model.noise_dim)
    full = model.loss(x, noise=noise, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model.loss(x, noise=noise, **kwargs)
        bound = model.log_likelihood(x, 4, generator=torch.Generator().manual_seed(0))
    assert half.loss.dtype == torch.float32 and bound.dtype == torch.float32
    assert torch.isfinite(half.loss) and torch.isfinite(bound).all()
    assert abs(float(half.loss.detach()) - float(full.loss.detach())) < 0.02 * abs(float(full.loss.detach())) + 1.0
