"""Priors against independent references: torch.distributions and Monte Carlo."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from vaelab.errors import VaelabError
from vaelab.latent.gaussian import Posterior
from vaelab.latent.priors import (PRIORS, MixtureOfGaussians, StandardNormal, VampPrior,
                                  build_prior)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L = 3


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_posterior(b: int, l: int, seed: int = 0) -> Posterior:
    g = gen(seed)
    return Posterior(torch.randn(b, l, generator=g), torch.randn(b, l, generator=g) * 0.7)


def random_mog(k: int = 4, seed: int = 1) -> MixtureOfGaussians:
    torch.manual_seed(seed)
    prior = MixtureOfGaussians(L, n_components=k)
    with torch.no_grad():  # move off the init values so weights and variances are exercised
        prior.logvars.normal_(0.0, 0.8)
        prior.logits.normal_(0.0, 1.0)
    return prior


def reference_mixture(means, logvars, logits) -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(logits=logits),
                             Independent(Normal(means, torch.exp(0.5 * logvars)), 1))


class TinyEncoder(nn.Module):
    def __init__(self, event=(2, 3), latent=L):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(event[0] * event[1], 8), nn.Tanh(),
                                 nn.Linear(8, 2 * latent))

    def forward(self, x) -> Posterior:
        mean, logvar = self.net(x).chunk(2, dim=-1)
        return Posterior(mean, logvar)


def bound_vamp(k: int = 5, seed: int = 2):
    torch.manual_seed(seed)
    encoder = TinyEncoder()
    prior = VampPrior(L, k, (2, 3)).bind(encoder)
    return prior, encoder


# ---- standard normal -------------------------------------------------------------------

def test_standard_normal_kl_matches_torch_distributions():
    q = random_posterior(6, 4)
    ref = kl_divergence(Normal(q.mean, q.std), Normal(0.0, 1.0))
    got = StandardNormal(4).kl(q)
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, ref)


def test_standard_normal_kl_matches_monte_carlo():
    q = random_posterior(3, 4, seed=5)
    prior = StandardNormal(4)
    z = q.mean + q.std * torch.randn(20000, 3, 4, generator=gen(7))  # (S, B, L)
    est = q.log_prob(z) - prior.log_prob(z)  # (S, B)
    se = est.std(0) / est.shape[0] ** 0.5
    err = (est.mean(0) - prior.kl(q).sum(-1)).abs()
    assert (err < 4 * se + 1e-3).all(), (err, se)


def test_standard_normal_log_prob_and_sample():
    prior = StandardNormal(4)
    z = torch.randn(2, 5, 4)
    torch.testing.assert_close(prior.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    a, b = prior.sample(7, generator=gen(3)), prior.sample(7, generator=gen(3))
    assert a.shape == (7, 4) and torch.equal(a, b)
    assert list(prior.parameters()) == []


# ---- mixture of Gaussians --------------------------------------------------------------

@pytest.mark.parametrize("shape", [(9, L), (4, 6, L)])
def test_mog_log_prob_matches_mixture_same_family(shape):
    prior = random_mog()
    ref = reference_mixture(prior.means, prior.logvars, prior.logits)
    z = torch.randn(shape, generator=gen(4)) * 2
    got = prior.log_prob(z)
    assert got.shape == shape[:-1]
    torch.testing.assert_close(got, ref.log_prob(z).detach())


def test_mog_init_and_no_analytic_kl():
    prior = MixtureOfGaussians(L, n_components=6)
    assert prior.means.shape == (6, L) and prior.means.std() > 0.1
    assert torch.equal(prior.logvars, torch.zeros(6, L)) and torch.equal(prior.logits, torch.zeros(6))
    assert not prior.analytic_kl
    with pytest.raises(NotImplementedError):
        prior.kl(random_posterior(2, L))


def check_sample_moments(prior, ref: MixtureSameFamily):
    z = prior.sample(200_000, generator=gen(11)).detach()
    assert z.shape == (200_000, L)
    torch.testing.assert_close(z.mean(0), ref.mean.detach(), atol=0.02, rtol=0.0)
    torch.testing.assert_close(z.var(0), ref.variance.detach(), atol=0.0, rtol=0.03)


def test_mog_sample_moments_and_reproducible():
    prior = random_mog()
    check_sample_moments(prior, reference_mixture(prior.means, prior.logvars, prior.logits))
    a, b = prior.sample(50, generator=gen(3)), prior.sample(50, generator=gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, prior.sample(50, generator=gen(4)))


# ---- VampPrior -------------------------------------------------------------------------

def vamp_reference(prior, encoder) -> MixtureSameFamily:
    q = encoder(prior.pseudo_inputs.clamp(0.0, 1.0))
    return reference_mixture(q.mean, q.logvar, torch.zeros(prior.n_pseudo))


@pytest.mark.parametrize("shape", [(7, L), (3, 4, L)])
def test_vamp_log_prob_matches_mixture_same_family(shape):
    prior, encoder = bound_vamp()
    with torch.no_grad():  # spread beyond [0, 1] so the hardtanh matters
        prior.pseudo_inputs.normal_(0.5, 0.8)
    z = torch.randn(shape, generator=gen(5))
    got = prior.log_prob(z)
    assert got.shape == shape[:-1]
    torch.testing.assert_close(got, vamp_reference(prior, encoder).log_prob(z))


def test_vamp_state_dict_holds_only_pseudo_inputs():
    prior, encoder = bound_vamp(k=4)
    assert list(prior.state_dict()) == ["pseudo_inputs"]
    assert [name for name, _ in prior.named_parameters()] == ["pseudo_inputs"]
    assert prior.pseudo_inputs.shape == (4, 2, 3)

    class Owner(nn.Module):  # the VAE: the encoder's weights appear once, under the encoder
        def __init__(self):
            super().__init__()
            self.encoder, self.prior = encoder, prior

    keys = list(Owner().state_dict())
    assert keys.count("prior.pseudo_inputs") == 1
    assert not any(k.startswith("prior.") and k != "prior.pseudo_inputs" for k in keys)


def test_vamp_init_near_half():
    prior = VampPrior(L, 50, (2, 3))
    assert abs(prior.pseudo_inputs.mean().item() - 0.5) < 0.01
    assert prior.pseudo_inputs.std().item() < 0.05


def test_vamp_gradients_reach_pseudo_inputs_and_encoder():
    prior, encoder = bound_vamp()
    prior.log_prob(torch.randn(6, L, generator=gen(6))).sum().backward()
    assert prior.pseudo_inputs.grad is not None and prior.pseudo_inputs.grad.abs().sum() > 0
    for p in encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_vamp_held_encodes_once_and_changes_nothing():
    prior, encoder = bound_vamp()
    calls = []
    prior.bind(lambda u: calls.append(1) or encoder(u))
    z = torch.randn(6, L, generator=gen(9))
    with torch.no_grad():
        plain = [prior.log_prob(z) for _ in range(3)]
        assert len(calls) == 3
        with prior.held():
            held = [prior.log_prob(z) for _ in range(3)]
        assert len(calls) == 4  # once for the whole block
        assert prior.log_prob(z) is not None and len(calls) == 5  # released after it
    for a, b in zip(plain, held):
        assert torch.equal(a, b)
    with prior.held():  # under autograd nothing is held: gradients must reach the encoder
        prior.log_prob(z).sum().backward()
        prior.log_prob(z).sum().backward()
    assert len(calls) == 7 and prior.pseudo_inputs.grad is not None


def test_vamp_sample_moments_and_reproducible():
    prior, encoder = bound_vamp(k=4)
    with torch.no_grad():
        prior.pseudo_inputs.uniform_(0.0, 1.0, generator=gen(8))
        check_sample_moments(prior, vamp_reference(prior, encoder))
        a, b = prior.sample(40, generator=gen(3)), prior.sample(40, generator=gen(3))
    assert torch.equal(a, b)


def test_vamp_unbound_and_no_analytic_kl():
    prior = VampPrior(L, 3, (2, 3))
    with pytest.raises(RuntimeError, match="bind"):
        prior.log_prob(torch.zeros(1, L))
    with pytest.raises(NotImplementedError):
        prior.kl(random_posterior(2, L))


# ---- build_prior -----------------------------------------------------------------------

def test_build_prior_table():
    assert PRIORS == ("standard-normal", "mog", "vamp")
    expected = {"standard-normal": StandardNormal, "mog": MixtureOfGaussians, "vamp": VampPrior}
    for name in PRIORS:
        prior = build_prior(name, 4, n_components=3, event_shape=(2, 3))
        assert type(prior) is expected[name] and prior.name == name and prior.latent_dim == 4
        assert prior.analytic_kl == (name == "standard-normal")
    assert build_prior("vamp", 4, n_components=3, event_shape=(2, 3)).pseudo_inputs.shape == (3, 2, 3)
    assert build_prior("mog", 4, n_components=3).means.shape == (3, 4)


def test_build_prior_errors():
    with pytest.raises(VaelabError, match="standard-normal, mog, vamp"):
        build_prior("laplace", 4)
    with pytest.raises(VaelabError, match="event_shape"):
        build_prior("vamp", 4)
