"""The VAE's math against independent references."""

import math

import pytest
import torch

from vaelab.config import ModelConfig
from vaelab.model import VAE, Posterior


def small_vae(latent=3, shape=(1, 6, 6), **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=latent, hidden=[32], **kw)
    return VAE(cfg, shape)


def test_analytic_kl_matches_monte_carlo_and_torch():
    torch.manual_seed(1)
    q = Posterior(torch.randn(4, 5), torch.randn(4, 5) * 0.5)
    analytic = q.kl_per_dim().sum(-1)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mean, q.std), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(analytic, reference)
    z = q.mean + q.std * torch.randn(200_000, 4, 5)
    mc = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)).mean(0)
    torch.testing.assert_close(mc, analytic, atol=0.02, rtol=0.01)


def test_posterior_log_prob_matches_torch_distributions():
    q = Posterior(torch.randn(3, 4), torch.randn(3, 4))
    z = torch.randn(7, 3, 4)
    ref = torch.distributions.Normal(q.mean, q.std).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z), ref)


def test_loss_is_summed_over_pixels_not_averaged():
    vae = small_vae()
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.3))
    out = vae.loss(x)
    q = vae.encode(x)
    # the reconstruction term of one image is a sum over its 36 pixels: far above a per-pixel mean
    assert out.recon > 36 * 0.3
    torch.testing.assert_close(out.kl, q.kl_per_dim().sum(-1).mean())
    torch.testing.assert_close(out.loss, out.recon + out.kl)


def test_beta_zero_is_an_autoencoder_and_free_bits_floor():
    vae = small_vae()
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.3))
    torch.manual_seed(3)
    ae = vae.loss(x, beta=0.0)
    torch.manual_seed(3)
    full = vae.loss(x, beta=1.0)
    torch.testing.assert_close(ae.loss, ae.recon)
    torch.testing.assert_close(full.loss - ae.loss, full.kl)
    torch.manual_seed(3)
    fb = vae.loss(x, beta=1.0, free_bits=5.0)  # floor above every dimension's KL
    torch.testing.assert_close(fb.loss, fb.recon + 5.0 * vae.latent_dim)


def test_iwae_bound_is_at_least_the_elbo_and_grows_with_k():
    vae = small_vae()
    x = torch.bernoulli(torch.full((16, 1, 6, 6), 0.4))
    gen = torch.Generator().manual_seed(0)
    elbo = torch.stack([vae.elbo_terms(x, generator=gen)["elbo"] for _ in range(200)]).mean(0)
    estimates = {}
    for k in (1, 10, 100, 1000):
        gen = torch.Generator().manual_seed(1)
        estimates[k] = torch.stack([vae.log_likelihood(x, k, generator=gen) for _ in range(5)]).mean(0)
    # K=1 is an unbiased estimate of the ELBO
    assert abs(float(estimates[1].mean() - elbo.mean())) < 0.5
    means = [float(estimates[k].mean()) for k in (1, 10, 100, 1000)]
    assert all(b >= a - 0.05 for a, b in zip(means, means[1:])), means
    assert means[-1] > float(elbo.mean())


def test_log_likelihood_streaming_is_exact(monkeypatch):
    """Chunks of samples combined by the running log-sum-exp give exactly the one-pass value."""
    vae = small_vae()
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    full = torch.randn(64, 5, dtype=torch.float32) * 30  # widely spread log-weights
    served = []

    def fixed_log_weights(x, q, h, k, generator=None, log_prob=None):
        start = sum(served)
        served.append(k)
        return full[start:start + k], None

    monkeypatch.setattr(vae, "_log_weights", fixed_log_weights)
    streamed = vae.log_likelihood(x, 64, chunk=7)
    assert served == [7] * 9 + [1]
    torch.testing.assert_close(streamed, torch.logsumexp(full, 0) - math.log(64))


def test_iw_estimate_matches_exact_marginal_of_linear_gaussian_model():
    """For a decoder p(x|z) = N(Wz + b, s^2 I), log p(x) is Gaussian in closed form."""
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=2, hidden=[16], decoder_hidden=[], likelihood="gaussian",
                      variance="fixed", sigma=0.5)
    vae = VAE(cfg, (4,))
    W, b = vae.decoder.head.weight.detach(), vae.decoder.head.bias.detach()
    x = torch.randn(6, 4)
    cov = W @ W.T + 0.25 * torch.eye(4)
    exact = torch.distributions.MultivariateNormal(b, cov).log_prob(x)
    estimate = vae.log_likelihood(x, 20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(estimate, exact, atol=0.15, rtol=0.02)


def test_iwae_gradient_equals_importance_weighted_gradient():
    """d/dθ log mean_i w_i = sum_i w̃_i d/dθ log w_i with w̃ the normalised, detached weights."""
    vae = small_vae()
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.4))
    q, h = vae._posterior(x)
    log_w, _ = vae._log_weights(x, q, h, 8, torch.Generator().manual_seed(0))
    bound = (torch.logsumexp(log_w, 0) - math.log(8)).sum()
    g1 = torch.autograd.grad(bound, vae.decoder.head.bias, retain_graph=True)[0]
    weights = torch.softmax(log_w, 0).detach()
    g2 = torch.autograd.grad((weights * log_w).sum(), vae.decoder.head.bias)[0]
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("likelihood,variance", [("bernoulli", "fixed"), ("gaussian", "learned-logvar"),
                                                 ("gaussian", "relu")])
def test_shapes_and_sampling(likelihood, variance):
    vae = small_vae(likelihood=likelihood, variance=variance)
    assert vae.sample_prior(5).shape == (5, 1, 6, 6)
    x = torch.rand(3, 1, 6, 6)
    assert vae.reconstruct(x).shape == (3, 1, 6, 6)
