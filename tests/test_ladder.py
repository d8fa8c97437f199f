"""The Ladder VAE (vaelab.families.ladder) against closed forms and the bounds' inequalities."""

import math

import pytest
import torch
from torch import nn

from vaelab.families.ladder import LadderVAE, gaussian_kl_per_dim, precision_weighted
from vaelab.latent.gaussian import Posterior
from vaelab.likelihoods import build_likelihood

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every model here is tiny: one thread is faster than two on a shared machine."""


def mlp_ladder(shape=(1, 8, 8), latent_dims=(4, 2), hidden=(32, 16), seed=0, **kw):
    torch.manual_seed(seed)
    return LadderVAE(shape, build_likelihood("bernoulli", shape), list(latent_dims), list(hidden), **kw)


def conv_ladder(seed=0):
    torch.manual_seed(seed)
    shape = (1, 28, 28)
    return LadderVAE(shape, build_likelihood("bernoulli", shape), [8, 4], [32, 16], network="conv",
                     channels=[8, 16], kernels=[4, 4], strides=[2, 2], dense=32)


def binary_images(n, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *shape), 0.5), generator=g)


# -- the pieces ----------------------------------------------------------------------------
def test_precision_weighted_posterior_is_the_normalised_product_of_the_two_gaussians():
    torch.manual_seed(0)
    m1, lv1, m2, lv2 = (torch.randn(5, 3, dtype=F64) for _ in range(4))
    q = precision_weighted(m1, lv1, m2, lv2)
    p1, p2 = torch.exp(-lv1), torch.exp(-lv2)  # precisions add, means are precision-weighted
    torch.testing.assert_close(q.logvar.exp(), 1 / (p1 + p2))
    torch.testing.assert_close(q.mean, (m1 * p1 + m2 * p2) / (p1 + p2))
    # scales e^80 apart: the sharper estimate wins, nothing overflows
    q = precision_weighted(m1, torch.full_like(lv1, -40.0), m2, torch.full_like(lv2, 40.0))
    torch.testing.assert_close(q.mean, m1)
    torch.testing.assert_close(q.logvar, torch.full_like(lv1, -40.0))

    kl = gaussian_kl_per_dim(Posterior(m1, lv1), m2, lv2)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                  torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(kl, reference)


def test_constructor_rejects_lists_that_do_not_describe_layers():
    like = build_likelihood("bernoulli", (1, 8, 8))
    with pytest.raises(ValueError, match="one entry per stochastic layer"):
        LadderVAE((1, 8, 8), like, [4, 2], [32])
    with pytest.raises(ValueError, match=">= 1"):
        LadderVAE((1, 8, 8), like, [4, 0], [32, 16])
    with pytest.raises(ValueError, match="needs images"):
        LadderVAE((64,), build_likelihood("bernoulli", (64,)), [4], [32], network="conv")
    with pytest.raises(ValueError, match="shape"):
        LadderVAE((1, 4, 4), like, [4], [32])


# -- the closed form ------------------------------------------------------------------------
def _make_linear(module: nn.Module) -> None:
    """Every ReLU becomes the identity, so each network is an affine map."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.Identity())
        else:
            _make_linear(child)


def _affine(f, d):
    """(M, c) with f(z) = M z + c, read off an affine f at 0 and the unit vectors."""
    c = f(torch.zeros(1, d, dtype=F64))[0]
    return (f(torch.eye(d, dtype=F64)) - c).T, c


@torch.no_grad()
def test_linear_gaussian_ladder_matches_the_closed_form_marginal():
    # z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, S1), x | z1 ~ N(B z1 + b, s^2 I)
    # => x ~ N(B a + b, B (A A^T + S1) B^T + s^2 I)
    torch.manual_seed(0)
    d, s = 4, 1.0
    model = LadderVAE((d,), build_likelihood("gaussian", (d,), variance="fixed", sigma=s), [3, 2], [6, 5]).double()
    _make_linear(model)
    model.down[0][-1].weight[3:] = 0  # the prior's log-variance rows: S1 no longer depends on z2
    A, a = _affine(lambda z: model.down[0](z)[:, :3], 2)
    S1 = torch.diag(model.down[0](torch.zeros(1, 2, dtype=F64))[0, 3:].exp())
    B, b = _affine(lambda z: model.decoder(z)[:, 0], 3)
    marginal = torch.distributions.MultivariateNormal(
        B @ a + b, B @ (A @ A.T + S1) @ B.T + s**2 * torch.eye(d, dtype=F64))
    x = marginal.sample((6,))
    exact = marginal.log_prob(x)

    # decode runs z2 through the prior means; sample_prior draws every layer
    z2 = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(model.decode(z2)[:, 0], (A @ z2.T + a[:, None]).T @ B.T + b)
    means = model.sample_prior(20000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(means.mean(0), B @ a + b, atol=0.03, rtol=0)
    torch.testing.assert_close(means.T.cov(), B @ (A @ A.T + S1) @ B.T, atol=0.03, rtol=0)
    g = torch.Generator().manual_seed(1)

    # the randomly initialised encoder: a valid but loose bound, strictly below log p(x)
    elbo = model.elbo_terms(x.repeat(2000, 1), generator=g)["elbo"].view(2000, -1)
    se = elbo.std(0) / math.sqrt(2000)
    assert (elbo.mean(0) + 4 * se < exact).all(), (elbo.mean(0), exact)

    # importance sampling needs a proposal wider than the posterior or its weights have no
    # variance: a random encoder is often narrower and gave a spread of 0.3-0.5 nats at K=4000.
    # Bottom-up estimates that say "anything" (zero mean, large variance) fix that.
    for head, dim, logvar in zip(model.up_heads, model.latent_dims, (3.0, 0.7)):
        head.weight.zero_()
        head.bias[:dim] = 0.0
        head.bias[dim:] = logvar
    estimates = torch.stack([model.log_likelihood(x, 4000, generator=g) for _ in range(4)])
    # one estimate's spread is about 0.025 nats here, so 0.06 is over 4 standard errors of the mean
    torch.testing.assert_close(estimates.mean(0), exact, atol=0.06, rtol=0)
    elbo = model.elbo_terms(x.repeat(2000, 1), generator=g)["elbo"].view(2000, -1).mean(0)
    assert (elbo < exact).all()


# -- the bounds --------------------------------------------------------------------------------
@torch.no_grad()
def test_iw_bound_matches_the_elbo_at_k1_and_rises_with_k():
    model = mlp_ladder()
    x = binary_images(16)
    g = torch.Generator().manual_seed(0)
    reps = 50
    mean, se = {}, {}
    for k in (1, 10, 100):
        per_rep = model.log_likelihood(x.repeat(reps, 1, 1, 1), k, generator=g).view(reps, -1).mean(1)
        mean[k], se[k] = per_rep.mean(), per_rep.std() / math.sqrt(reps)
    elbo = model.elbo_terms(x.repeat(500, 1, 1, 1), generator=g)["elbo"].view(500, -1).mean(1)
    elbo_mean, elbo_se = elbo.mean(), elbo.std() / math.sqrt(500)
    # E[IW_1] is the ELBO: the log weights and the analytic layer KLs describe the same bound
    assert abs(mean[1] - elbo_mean) < 4 * math.hypot(se[1], elbo_se), (mean[1], elbo_mean)
    assert mean[10] > mean[1] + 3 * math.hypot(se[1], se[10])
    assert mean[100] > mean[10] - 3 * math.hypot(se[10], se[100])
    assert mean[100] > elbo_mean


@torch.no_grad()
def test_log_likelihood_does_not_depend_on_the_chunk():
    model = mlp_ladder(latent_dims=(8, 4))  # 4 examples x 12 draws: whole blocks of CPU randn
    x = binary_images(4)
    k = 12
    whole = torch.randn((k, 4, model.noise_dim), generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    pieces = torch.cat([torch.randn((1, 4, model.noise_dim), generator=g) for _ in range(k)])
    if not torch.equal(whole, pieces):
        pytest.skip("this torch draws different numbers in one call and in several")
    one = model.log_likelihood(x, k, chunk=1, generator=torch.Generator().manual_seed(5))
    auto = model.log_likelihood(x, k, chunk=0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(one, auto)
    # and iwae_loss with those draws as noise is the same bound
    iwae = model.iwae_loss(x, k, noise=whole)
    torch.testing.assert_close(iwae.elbo, auto.mean())


# -- the training objective ------------------------------------------------------------------
def test_loss_parts_add_up_and_gradients_reach_every_parameter():
    model = mlp_ladder()
    x = binary_images(8)
    noise = torch.randn(8, model.noise_dim, generator=torch.Generator().manual_seed(2))
    out = model.loss(x, beta=0.7, noise=noise)
    torch.testing.assert_close(out.loss, out.recon + 0.7 * out.kl)
    torch.testing.assert_close(out.elbo, -(out.recon + out.kl))
    assert out.kl_per_dim.shape == (model.noise_dim,)
    assert out.kl_per_layer.shape == (2,)
    torch.testing.assert_close(out.kl, out.kl_per_dim.sum())
    torch.testing.assert_close(out.kl, out.kl_per_layer.sum())
    torch.testing.assert_close(out.kl_per_layer[0], out.kl_per_dim[:4].sum())
    assert (out.kl_per_dim >= 0).all()

    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    again = model.loss(x, beta=0.7, noise=noise)
    assert torch.equal(again.loss, out.loss) and torch.equal(again.kl_per_dim, out.kl_per_dim)
    # the generator path draws the same noise, in the same layout
    drawn = model.loss(x, beta=0.7, generator=torch.Generator().manual_seed(2))
    assert torch.equal(drawn.loss, out.loss)
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(terms["kl_per_dim"].mean(0), out.kl_per_dim)
    torch.testing.assert_close(terms["elbo"].mean(), out.elbo)

    # the layout: the bottom layer's columns first. Layer KLs depend only on the noise of the
    # layers above (the top layer's on none), so new bottom columns leave them as they were
    bottom = noise.clone()
    bottom[:, :4] = torch.randn(8, 4)
    moved = model.loss(x, beta=0.7, noise=bottom)
    assert torch.equal(moved.kl_per_layer, out.kl_per_layer) and not torch.equal(moved.recon, out.recon)
    top = noise.clone()
    top[:, 4:] = torch.randn(8, 2)
    moved = model.loss(x, beta=0.7, noise=top)
    assert not torch.equal(moved.kl_per_layer[0], out.kl_per_layer[0])
    torch.testing.assert_close(moved.kl_per_layer[1], out.kl_per_layer[1])

    floored = model.loss(x, beta=1.0, free_bits=50.0, noise=noise)  # a floor above every dimension's KL
    torch.testing.assert_close(floored.loss, floored.recon + 50.0 * model.noise_dim)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_a_few_adam_steps_lower_the_loss(network):
    model = conv_ladder() if network == "conv" else mlp_ladder((1, 28, 28), (16, 8), (64, 32))
    x = binary_images(8, (1, 28, 28))
    noise = torch.randn(8, model.noise_dim, generator=torch.Generator().manual_seed(0))
    before = model.loss(x, noise=noise).loss.item()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        optimiser.zero_grad()
        model.loss(x, generator=g).loss.backward()
        optimiser.step()
    after = model.loss(x, noise=noise).loss.item()
    assert after < before - 1.0, (before, after)


# -- shapes and generation ---------------------------------------------------------------------
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_public_methods_have_the_vae_shapes(network):
    model = conv_ladder() if network == "conv" else mlp_ladder((1, 28, 28), (8, 4), (32, 16))
    model.eval()
    x = binary_images(3, (1, 28, 28))
    assert (model.latent_dim, model.latent_dims, model.n_layers, model.noise_dim) == (4, [8, 4], 2, 12)
    q = model.encode(x)
    assert q.mean.shape == q.logvar.shape == (3, 4)
    layers = model.encode_all(x)
    assert [p.mean.shape for p in layers] == [(3, 8), (3, 4)]
    torch.testing.assert_close(layers[-1].mean, q.mean)  # the top layer's posterior is bottom-up alone
    assert model.decode(q.mean).shape == (3, 1, 1, 28, 28)
    samples = model.sample_prior(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 28, 28) and ((samples >= 0) & (samples <= 1)).all()
    for sample_posterior in (False, True):
        assert model.reconstruct(x, sample_posterior, torch.Generator().manual_seed(0)).shape == x.shape
    # at the posterior means every layer is deterministic
    torch.testing.assert_close(model.reconstruct(x), model.reconstruct(x))
    terms = model.elbo_terms(x)
    assert [terms[key].shape for key in ("elbo", "recon", "kl")] == [(3,)] * 3
    assert terms["kl_per_dim"].shape == (3, 12)
    assert model.log_likelihood(x, 7, chunk=3).shape == (3,)
    iwae = model.iwae_loss(x, 4, noise=torch.randn(4, 3, 12))
    assert iwae.kl_per_dim.shape == (12,) and iwae.kl_per_layer.shape == (2,)


def test_autocast_keeps_the_distributions_in_float32():
    model = mlp_ladder()
    x = binary_images(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(x, generator=torch.Generator().manual_seed(0))
        bound = model.log_likelihood(x, 5)
    assert out.loss.dtype == out.kl_per_dim.dtype == bound.dtype == torch.float32
    assert torch.isfinite(out.loss) and torch.isfinite(bound).all()
