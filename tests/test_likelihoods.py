"""Observation models against independent references (torch.distributions, scipy, numerical integration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import expit, log_expit, logsumexp

from vaelab.errors import VaelabError
from vaelab.likelihoods import LIKELIHOODS, VARIANCES, build_likelihood

LEVELS = np.arange(256) / 255.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def per_example(a: np.ndarray) -> np.ndarray:
    """Sum over everything but the batch dimension (the units contract)."""
    return a.reshape(a.shape[0], -1).sum(1)


def ref_dlogistic_log_pmf(level: np.ndarray, mu, s) -> np.ndarray:
    """log P(bin) from scipy's logistic log-CDF/log-SF, taking the difference on the side of the
    mean where it does not cancel, so it stays accurate far into the tails."""
    level, mu, s = np.broadcast_arrays(np.asarray(level, float), np.asarray(mu, float), np.asarray(s, float))
    lo, hi = (level - 0.5) / 255, (level + 0.5) / 255
    left_a, left_b = stats.logistic.logcdf(hi, mu, s), stats.logistic.logcdf(lo, mu, s)
    right_a, right_b = stats.logistic.logsf(lo, mu, s), stats.logistic.logsf(hi, mu, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = left_a + np.log(-np.expm1(left_b - left_a))
        right = right_a + np.log(-np.expm1(right_b - right_a))
    interior = np.where(level / 255 < mu, left, right)
    return np.where(level == 0, left_a, np.where(level == 255, right_a, interior))


def ref_dlogistic_pmf_table(mu, s) -> np.ndarray:
    """pmf over all 256 levels, last axis."""
    return np.exp(ref_dlogistic_log_pmf(np.arange(256), np.asarray(mu)[..., None], np.asarray(s)[..., None]))


# ---------------------------------------------------------------------------------------
# Bernoulli
# ---------------------------------------------------------------------------------------
def test_bernoulli_matches_torch_distribution_and_numpy():
    lik = build_likelihood("bernoulli", (3, 5))
    logits = torch.randn(4, 1, 3, 5, generator=gen(), dtype=torch.float64) * 4
    logits[0, 0, 0, :3] = torch.tensor([-50.0, 50.0, 0.0], dtype=torch.float64)
    x = torch.bernoulli(torch.full((4, 3, 5), 0.5, dtype=torch.float64), generator=gen(1))
    got = lik.log_prob(logits, x)
    assert got.shape == (4,)
    ref_torch = torch.distributions.Bernoulli(logits=logits[:, 0]).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(got, ref_torch)
    lg, xn = logits[:, 0].numpy(), x.numpy()
    ref_np = per_example(xn * log_expit(lg) + (1 - xn) * log_expit(-lg))
    np.testing.assert_allclose(got.numpy(), ref_np, rtol=1e-12)
    torch.testing.assert_close(lik.mean(logits), torch.distributions.Bernoulli(logits=logits[:, 0]).mean)


def test_bernoulli_fractional_targets_give_cross_entropy():
    lik = build_likelihood("bernoulli", (6,))
    logits = torch.randn(3, 1, 6, generator=gen(), dtype=torch.float64) * 3
    x = torch.rand(3, 6, generator=gen(1), dtype=torch.float64)
    lg, xn = logits[:, 0].numpy(), x.numpy()
    ref = per_example(xn * np.log(expit(lg)) + (1 - xn) * np.log(expit(-lg)))
    np.testing.assert_allclose(lik.log_prob(logits, x).numpy(), ref, rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Gaussian
# ---------------------------------------------------------------------------------------
GAUSSIAN_CASES = [
    ("fixed", lambda v: np.full_like(v, 0.3**2)),
    ("learned-logvar", np.exp),
    ("relu", lambda v: np.maximum(v, 0) + 1e-3),
    ("softplus", lambda v: np.logaddexp(0, v) + 1e-3),
]


@pytest.mark.parametrize("sigmoid_mean", [False, True])
@pytest.mark.parametrize("variance, var_of", GAUSSIAN_CASES, ids=[c[0] for c in GAUSSIAN_CASES])
def test_gaussian_matches_scipy_norm(variance, var_of, sigmoid_mean):
    lik = build_likelihood(
        "gaussian", (2, 3, 4), variance=variance, sigma=0.3, variance_eps=1e-3, sigmoid_mean=sigmoid_mean
    )
    params = torch.randn(5, lik.n_params, 2, 3, 4, generator=gen(), dtype=torch.float64) * 2
    x = torch.rand(5, 2, 3, 4, generator=gen(1), dtype=torch.float64)
    p = params.numpy()
    loc = expit(p[:, 0]) if sigmoid_mean else p[:, 0]
    var = var_of(p[:, 1] if lik.n_params == 2 else p[:, 0])
    ref = per_example(stats.norm.logpdf(x.numpy(), loc=loc, scale=np.sqrt(var)))
    np.testing.assert_allclose(lik.log_prob(params, x).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(lik.mean(params).numpy(), loc, rtol=1e-12)
    np.testing.assert_allclose(lik.variance(params).numpy(), var, rtol=1e-12)


def test_gaussian_shared_variance_matches_scipy_and_is_learnable():
    lik = build_likelihood("gaussian", (3, 4), variance="shared", logvar_init_bias=-1.5).double()
    assert lik.n_params == 1
    assert torch.all(lik.shared_logvar == -1.5)
    assert any(p is lik.shared_logvar for p in lik.parameters())
    with torch.no_grad():
        lik.shared_logvar.copy_(torch.randn(3, 4, generator=gen(2), dtype=torch.float64))
    params = torch.randn(5, 1, 3, 4, generator=gen(), dtype=torch.float64)
    x = torch.randn(5, 3, 4, generator=gen(1), dtype=torch.float64)
    scale = np.exp(0.5 * lik.shared_logvar.detach().numpy())
    ref = per_example(stats.norm.logpdf(x.numpy(), loc=params[:, 0].numpy(), scale=scale))
    got = lik.log_prob(params, x)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10)
    assert lik.variance(params).shape == (5, 3, 4)
    got.sum().backward()
    assert lik.shared_logvar.grad is not None and torch.all(lik.shared_logvar.grad != 0)


def test_relu_variance_without_eps_is_the_nan_trigger():
    """variance='relu' with variance_eps=0 and a non-positive variance head gives sigma^2 = 0."""
    params = torch.zeros(2, 2, 4)
    params[:, 1] = torch.tensor([0.0, -1.0, 2.0, 3.0])
    x = torch.rand(2, 4, generator=gen())
    bad = build_likelihood("gaussian", (4,), variance="relu", variance_eps=0.0)
    assert not torch.isfinite(bad.log_prob(params, x)).any()
    fixed = build_likelihood("gaussian", (4,), variance="relu", variance_eps=1e-4)
    assert torch.isfinite(fixed.log_prob(params, x)).all()


# ---------------------------------------------------------------------------------------
# Continuous Bernoulli
# ---------------------------------------------------------------------------------------
CB_LOGITS = [0.0, 1e-9, -1e-7, 1e-4, -3e-3, 9.9e-3, -1.01e-2, 0.05, -0.3, 0.49, 0.51, -1.0, 2.5, -7.0, 20.0, -20.0]


def test_continuous_bernoulli_matches_torch_distribution():
    lik = build_likelihood("continuous-bernoulli", (1,))
    logits = torch.tensor(CB_LOGITS, dtype=torch.float64).repeat_interleave(5)
    x = torch.tensor([0.0, 0.13, 0.5, 0.91, 1.0], dtype=torch.float64).repeat(len(CB_LOGITS))
    params = logits.view(-1, 1, 1)
    ref = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(lik.log_prob(params, x.view(-1, 1)), ref, rtol=1e-9, atol=1e-9)
    ref_mean = torch.distributions.ContinuousBernoulli(logits=logits).mean
    torch.testing.assert_close(lik.mean(params)[:, 0], ref_mean, rtol=1e-9, atol=1e-9)
    # float32 keeps the same values (no probabilities rounding to 0 or 1 at logits +-20)
    got32 = lik.log_prob(params.float(), x.view(-1, 1).float())
    torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-5)
    mean32 = lik.mean(params.float())[:, 0]
    torch.testing.assert_close(mean32.double(), ref_mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [0.01, 0.3, 0.5, 0.5 + 1e-6, 0.5 - 2e-3, 0.8, 0.999])
def test_continuous_bernoulli_density_integrates_to_one_and_mean_matches(lam):
    lik = build_likelihood("continuous-bernoulli", (1,))
    params = torch.tensor([[[math.log(lam / (1 - lam))]]], dtype=torch.float64)

    def density(x: float) -> float:
        return math.exp(lik.log_prob(params, torch.tensor([[x]], dtype=torch.float64)).item())

    total, _ = integrate.quad(density, 0, 1)
    first_moment, _ = integrate.quad(lambda x: x * density(x), 0, 1)
    assert total == pytest.approx(1.0, abs=1e-9)
    assert lik.mean(params).item() == pytest.approx(first_moment, abs=1e-9)


def test_continuous_bernoulli_samples_follow_its_cdf():
    logits = torch.tensor([-20.0, -3.0, 0.0, 1e-6, 0.7, 4.0, 50.0], dtype=torch.float64)
    lik = build_likelihood("continuous-bernoulli", (len(logits),))
    n = 4000
    params = logits.view(1, 1, -1).expand(n, 1, -1)
    draws = lik.sample(params, generator=gen(3))
    assert draws.shape == (n, len(logits))
    assert draws.min() >= 0 and draws.max() <= 1
    for j, eta in enumerate(logits.tolist()):
        # closed-form CDF F(x) = expm1(eta x) / expm1(eta); torch's own cdf breaks once
        # sigmoid(eta) rounds to 1, so it cannot serve as the reference at eta = 50
        cdf = (lambda v, eta=eta: np.expm1(eta * v) / np.expm1(eta)) if eta != 0 else (lambda v: v)
        assert stats.kstest(draws[:, j].numpy(), cdf).pvalue > 1e-3, eta


# ---------------------------------------------------------------------------------------
# Discretized logistic and its mixture
# ---------------------------------------------------------------------------------------
def all_levels_log_prob(lik, params_one: torch.Tensor) -> torch.Tensor:
    """log_prob of each of the 256 values for one (n_params,) parameter vector, event_shape (1,)."""
    params = params_one.view(1, -1, 1).expand(256, -1, 1)
    x = torch.arange(256, dtype=params.dtype).view(256, 1) / 255
    return lik.log_prob(params, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "mu, log_s",
    [(0.5, -3.0), (0.0, -6.0), (1.0, -6.0), (-0.5, -2.0), (1.7, -4.0), (0.3, 2.0), (0.42, -12.0),
     (0.5, 100.0),  # scale so wide that a bin's width underflows: the mid-bin density fallback
     (0.5, -60.0)],  # a point mass exactly on the edge between two bins
)
def test_discretized_logistic_pmf_sums_to_one(mu, log_s, dtype):
    lik = build_likelihood("discretized-logistic", (1,))
    lp = all_levels_log_prob(lik, torch.tensor([mu, log_s], dtype=dtype))
    assert torch.isfinite(lp).all() or log_s == -60.0  # a point mass gives log 0 for other bins
    assert not torch.isnan(lp).any()
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-5 if dtype == torch.float32 else 1e-12)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(-1.0, 2.0), log_s=st.floats(-12.0, 6.0))
def test_discretized_logistic_pmf_sums_to_one_property(mu, log_s):
    lik = build_likelihood("discretized-logistic", (1,))
    lp = all_levels_log_prob(lik, torch.tensor([mu, log_s], dtype=torch.float64))
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-10)


def test_discretized_logistic_matches_scipy_cdf_difference_at_interior_values():
    lik = build_likelihood("discretized-logistic", (1,))
    levels = np.arange(1, 255)
    for mu, s in [(0.5, 0.1), (0.2, 0.03), (0.77, 0.004), (0.9, 0.5)]:
        lp = all_levels_log_prob(lik, torch.tensor([mu, math.log(s)], dtype=torch.float64)).numpy()
        ref = stats.logistic.cdf((levels + 0.5) / 255, mu, s) - stats.logistic.cdf((levels - 0.5) / 255, mu, s)
        keep = ref > 1e-8  # where the plain difference is itself accurate
        np.testing.assert_allclose(np.exp(lp[levels][keep]), ref[keep], rtol=1e-7)
        # edge bins extend to -inf and +inf
        assert lp[0] == pytest.approx(stats.logistic.logcdf(0.5 / 255, mu, s), abs=1e-10)
        assert lp[255] == pytest.approx(stats.logistic.logsf(254.5 / 255, mu, s), abs=1e-10)


def test_discretized_logistic_is_accurate_in_the_tails_in_float32():
    lik = build_likelihood("discretized-logistic", (1,))
    for mu, s in [(0.9, 0.002), (0.05, 0.01), (0.5, 1e-4)]:
        lp = all_levels_log_prob(lik, torch.tensor([mu, math.log(s)], dtype=torch.float32)).double().numpy()
        ref = ref_dlogistic_log_pmf(np.arange(256), mu, s)
        finite = np.isfinite(ref)
        np.testing.assert_allclose(lp[finite], ref[finite], rtol=2e-4, atol=5e-3)


def test_mixture_with_one_component_equals_single():
    single = build_likelihood("discretized-logistic", (2, 3))
    mixture = build_likelihood("discretized-logistic-mixture", (2, 3), n_mixtures=1)
    assert mixture.n_params == 3
    params = torch.randn(4, 2, 2, 3, generator=gen(), dtype=torch.float64) * 0.5
    params[:, 0] += 0.5
    params[:, 1] -= 3
    logits = torch.randn(4, 1, 2, 3, generator=gen(1), dtype=torch.float64) * 5
    x = torch.randint(0, 256, (4, 2, 3), generator=gen(2)).double() / 255
    mix_params = torch.cat([logits, params], dim=1)
    torch.testing.assert_close(mixture.log_prob(mix_params, x), single.log_prob(params, x))
    torch.testing.assert_close(mixture.mean(mix_params), single.mean(params))


def test_mixture_matches_hand_reference():
    k = 3
    lik = build_likelihood("discretized-logistic-mixture", (2, 3), n_mixtures=k)
    assert lik.n_params == 3 * k and lik.discrete_8bit
    b = 4
    logits = torch.randn(b, k, 2, 3, generator=gen(), dtype=torch.float64) * 2
    means = torch.rand(b, k, 2, 3, generator=gen(1), dtype=torch.float64) * 1.4 - 0.2
    log_s = torch.rand(b, k, 2, 3, generator=gen(2), dtype=torch.float64) * 5 - 6
    params = torch.cat([logits, means, log_s], dim=1)
    levels = torch.randint(0, 256, (b, 2, 3), generator=gen(3))
    x = levels.double() / 255

    lg, mu, s = logits.numpy(), means.numpy(), np.exp(log_s.numpy())
    log_w = lg - logsumexp(lg, axis=1, keepdims=True)
    pmf = ref_dlogistic_pmf_table(mu, s)  # (b, k, 2, 3, 256)
    comp = np.log(np.take_along_axis(pmf, levels.numpy()[:, None, ..., None], axis=-1)[..., 0])
    ref = per_example(logsumexp(log_w + comp, axis=1))
    np.testing.assert_allclose(lik.log_prob(params, x).numpy(), ref, rtol=1e-9)

    w = np.exp(log_w)
    ref_mean = (w * (pmf * LEVELS).sum(-1)).sum(1)
    np.testing.assert_allclose(lik.mean(params).numpy(), ref_mean, rtol=1e-9)


def test_discretized_logistic_mean_is_the_pmf_mean():
    lik = build_likelihood("discretized-logistic", (4,))
    mu = np.array([0.5, 0.002, 0.995, 1.3])
    s = np.array([0.05, 0.01, 0.2, 0.03])
    params = torch.tensor(np.stack([mu, np.log(s)])[None], dtype=torch.float64)
    ref = (ref_dlogistic_pmf_table(mu, s) * LEVELS).sum(-1)
    np.testing.assert_allclose(lik.mean(params)[0].numpy(), ref, rtol=1e-10)


# ---------------------------------------------------------------------------------------
# The RGB mixture (PixelCNN++): components over whole pixels, R -> G -> B coupled means
# ---------------------------------------------------------------------------------------
def rgb_params(k: int, b: int = 1, h: int = 1, w: int = 1, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Random parameters in the layout of the RGB mixture: (b, 4k, 3, h, w)."""
    g = gen(seed)
    logits = torch.randn(b, k, 3, h, w, generator=g, dtype=dtype)
    means = torch.rand(b, k, 3, h, w, generator=g, dtype=dtype) * 1.2 - 0.1
    log_s = torch.rand(b, k, 3, h, w, generator=g, dtype=dtype) * 3 - 5
    coeffs = torch.randn(b, k, 3, h, w, generator=g, dtype=dtype)
    return torch.cat([logits, means, log_s, coeffs], dim=1)


def ref_rgb_log_prob(params: np.ndarray, rgb: tuple[int, int, int]) -> float:
    """log P(pixel) written out with the math module: params (4k, 3) for one pixel."""
    k = params.shape[0] // 4
    x = [v / 255 for v in rgb]

    def log_cdf(y):  # log sigmoid(y)
        return -math.log1p(math.exp(-y)) if y > 0 else y - math.log1p(math.exp(y))

    def channel(level, mu, s):
        lo, hi = (level - 0.5 / 255 - mu) / s, (level + 0.5 / 255 - mu) / s
        if round(level * 255) == 0:
            return log_cdf(hi)
        if round(level * 255) == 255:
            return log_cdf(-lo)  # log(1 - sigmoid(lo))
        if lo > 0:  # above the mean: from the upper tail, where the difference does not cancel
            return math.log(1 / (1 + math.exp(lo)) - 1 / (1 + math.exp(hi)))
        return math.log(1 / (1 + math.exp(-hi)) - 1 / (1 + math.exp(-lo)))

    terms = []
    logits = [sum(params[i, c] for c in range(3)) for i in range(k)]
    log_norm = max(logits) + math.log(sum(math.exp(v - max(logits)) for v in logits))
    for i in range(k):
        m = params[k + i]
        s = [math.exp(v) for v in params[2 * k + i]]
        a, b, c = (math.tanh(v) for v in params[3 * k + i])
        mus = [m[0], m[1] + a * x[0], m[2] + b * x[0] + c * x[1]]
        terms.append(logits[i] - log_norm + sum(channel(x[ch], mus[ch], s[ch]) for ch in range(3)))
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def test_rgb_mixture_matches_plain_reference():
    k = 3
    lik = build_likelihood("discretized-logistic-mixture-rgb", (3, 2, 2), n_mixtures=k)
    assert lik.n_params == 4 * k and lik.discrete_8bit and not lik.binary
    params = rgb_params(k, b=2, h=2, w=2)
    levels = torch.randint(0, 256, (2, 3, 2, 2), generator=gen(5))
    levels[0, :, 0, 0] = torch.tensor([0, 255, 0])  # the edge bins
    levels[1, :, 1, 1] = torch.tensor([255, 0, 255])
    got = lik.log_prob(params, levels.double() / 255)
    for n in range(2):
        ref = sum(ref_rgb_log_prob(params[n, :, :, i, j].numpy(), tuple(levels[n, :, i, j].tolist()))
                  for i in range(2) for j in range(2))
        assert got[n].item() == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rgb_mixture_conditionals_sum_to_one(seed):
    # for a fixed red level, the exact sum over every green and blue (65,536 colours, float64)
    # is P(red), the red channel's own mixture pmf, which sums to 1 over the reds
    k = 4
    lik = build_likelihood("discretized-logistic-mixture-rgb", (3, 1, 1), n_mixtures=k)
    params = rgb_params(k, seed=seed)
    params[:, 2 * k:3 * k] -= 2  # sharp components: mass in few bins, where a wrong coupling shows
    gb = torch.cartesian_prod(torch.arange(256), torch.arange(256)).double() / 255
    for red in (0, 77, 255):
        x = torch.cat([torch.full((len(gb), 1), red / 255, dtype=torch.float64), gb], 1).view(-1, 3, 1, 1)
        joint = lik.log_prob(params.expand(len(gb), -1, -1, -1, -1), x).exp().sum().item()
        # P(red) from the mixture of the red channel alone (the coupling only moves G and B)
        weights = torch.softmax(params[0, :k].sum(1)[:, 0, 0], 0)
        single = build_likelihood("discretized-logistic", (1,))
        red_pmf = sum(w * single.log_prob(torch.stack([params[0, k + i, 0, 0], params[0, 2 * k + i, 0, 0]]).view(1, 2, 1)
                                          .expand(1, -1, -1), torch.tensor([[red / 255]], dtype=torch.float64)).exp()
                      for i, w in enumerate(weights))
        assert joint == pytest.approx(red_pmf.item(), rel=1e-9)


def test_rgb_mixture_one_component_uncoupled_matches_torch_logistic():
    # K=1 with no coupling: independent channels, each P(bin) a difference of logistic CDFs
    from torch.distributions import AffineTransform, SigmoidTransform, TransformedDistribution, Uniform

    lik = build_likelihood("discretized-logistic-mixture-rgb", (3, 4, 4), n_mixtures=1)
    params = rgb_params(1, b=3, h=4, w=4, seed=7)
    params[:, 3] = 0.0  # tanh(0): no coupling
    params[:, 2] = params[:, 2] / 3 - 0.4  # scales of 0.1 to 0.4: plain CDF differences stay accurate
    x = torch.randint(0, 256, (3, 3, 4, 4), generator=gen(8)).double() / 255
    mu, s = params[:, 1], params[:, 2].exp()
    logistic = TransformedDistribution(Uniform(torch.zeros_like(mu), torch.ones_like(mu)),
                                       [SigmoidTransform().inv, AffineTransform(mu, s)])
    upper = torch.where(x > 254.6 / 255, torch.ones_like(x), logistic.cdf(x + 0.5 / 255))
    lower = torch.where(x < 0.4 / 255, torch.zeros_like(x), logistic.cdf(x - 0.5 / 255))
    ref = (upper - lower).log().flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, x), ref, rtol=1e-8, atol=1e-8)


def test_rgb_mixture_mean_and_samples():
    k = 3
    lik = build_likelihood("discretized-logistic-mixture-rgb", (3, 1, 1), n_mixtures=k)
    params = rgb_params(k, seed=11)
    params[:, 1 * k:2 * k] = params[:, 1 * k:2 * k].clamp(0.2, 0.6)  # away from the clipping at 0 and 1
    draws = lik.sample(params.expand(N_DRAWS, -1, -1, -1, -1), generator=gen(12))
    assert draws.shape == (N_DRAWS, 3, 1, 1)
    assert torch.equal(draws, torch.round(draws * 255) / 255) and draws.min() >= 0 and draws.max() <= 1
    # the draws follow the pmf: their frequencies of red levels match P(red), and their mean the mean
    mean = lik.mean(params)[0].flatten()
    se = draws.flatten(1).std(0) / math.sqrt(N_DRAWS)
    assert torch.all((draws.flatten(1).mean(0) - mean).abs() < 5 * se + 2e-3)
    torch.testing.assert_close(lik.sample(params, generator=gen(1)), lik.sample(params, generator=gen(1)))


def test_rgb_mixture_gradients_finite_at_extremes():
    k = 2
    lik = build_likelihood("discretized-logistic-mixture-rgb", (3, 1, 2), n_mixtures=k)
    params = rgb_params(k, h=1, w=2, dtype=torch.float32)
    params[:, 2 * k:3 * k, :, 0, 0] = -40.0  # point masses
    params[:, 2 * k:3 * k, :, 0, 1] = 30.0  # flat
    params[:, k:2 * k] *= 30  # means far outside [0, 1]
    params[:, :k] *= 50
    params.requires_grad_(True)
    x = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]], [[128 / 255, 3 / 255]]]])
    lp = lik.log_prob(params, x)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_rgb_mixture_needs_three_channels():
    for shape in ((1, 4, 4), (12,)):
        with pytest.raises(VaelabError, match="RGB") as info:
            build_likelihood("discretized-logistic-mixture-rgb", shape)
        assert "\n" not in str(info.value)
    with pytest.raises(VaelabError, match="n_mixtures"):
        build_likelihood("discretized-logistic-mixture-rgb", (3, 2, 2), n_mixtures=0)


# ---------------------------------------------------------------------------------------
# Sampling moments
# ---------------------------------------------------------------------------------------
N_DRAWS = 20000


def check_moments(draws: torch.Tensor, mean: np.ndarray, var: np.ndarray) -> None:
    """Sample mean within 5 standard errors; sample variance within 10% (and a small floor)."""
    d = draws.double().numpy()
    np.testing.assert_array_less(np.abs(d.mean(0) - mean), 5 * np.sqrt(var / len(d)) + 1e-12)
    np.testing.assert_allclose(d.var(0), var, rtol=0.1, atol=1e-6)


def test_bernoulli_sample_moments():
    lik = build_likelihood("bernoulli", (4,))
    logits = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    draws = lik.sample(logits.view(1, 1, 4).expand(N_DRAWS, 1, 4), generator=gen(5))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    p = expit(logits.numpy().astype(float))
    check_moments(draws, p, p * (1 - p))


def test_gaussian_sample_moments():
    lik = build_likelihood("gaussian", (4,), variance="learned-logvar")
    params = torch.tensor([[0.1, -1.0, 2.0, 0.5], [0.0, -2.0, 1.0, -6.0]])
    draws = lik.sample(params.view(1, 2, 4).expand(N_DRAWS, 2, 4), generator=gen(6))
    check_moments(draws, params[0].double().numpy(), np.exp(params[1].double().numpy()))


def test_discretized_logistic_sample_moments_and_grid():
    lik = build_likelihood("discretized-logistic", (4,))
    mu = np.array([0.5, 0.02, 0.9, 0.3])
    s = np.array([0.1, 0.05, 0.2, 0.002])
    params = torch.tensor(np.stack([mu, np.log(s)]), dtype=torch.float32).view(1, 2, 4)
    draws = lik.sample(params.expand(N_DRAWS, 2, 4), generator=gen(7))
    assert draws.min() >= 0 and draws.max() <= 1
    u = draws * 255
    torch.testing.assert_close(u, u.round(), rtol=0, atol=1e-4)
    pmf = ref_dlogistic_pmf_table(mu, s)
    mean = (pmf * LEVELS).sum(-1)
    check_moments(draws, mean, (pmf * LEVELS**2).sum(-1) - mean**2)
    np.testing.assert_allclose(lik.mean(params)[0].numpy(), mean, rtol=1e-5)


def test_mixture_sample_moments():
    lik = build_likelihood("discretized-logistic-mixture", (2,), n_mixtures=2)
    logits = np.array([[0.0, 1.0], [2.0, -1.0]])  # (k, d)
    mu = np.array([[0.2, 0.5], [0.8, 0.1]])
    s = np.array([[0.05, 0.1], [0.02, 0.3]])
    params = torch.tensor(np.concatenate([logits, mu, np.log(s)]), dtype=torch.float32).view(1, 6, 2)
    draws = lik.sample(params.expand(N_DRAWS, 6, 2), generator=gen(8))
    w = np.exp(logits - logsumexp(logits, axis=0))
    pmf = (w[..., None] * ref_dlogistic_pmf_table(mu, s)).sum(0)  # (d, 256)
    mean = (pmf * LEVELS).sum(-1)
    check_moments(draws, mean, (pmf * LEVELS**2).sum(-1) - mean**2)
    np.testing.assert_allclose(lik.mean(params)[0].numpy(), mean, rtol=1e-5)


def test_samplers_are_reproducible_with_a_generator():
    for name in LIKELIHOODS:
        lik = build_likelihood(name, (3, 1, 2), n_mixtures=2)
        params = torch.randn(3, lik.n_params, 3, 1, 2, generator=gen())
        torch.testing.assert_close(lik.sample(params, generator=gen(9)), lik.sample(params, generator=gen(9)))


# ---------------------------------------------------------------------------------------
# Shapes, gradients, penalties, flags
# ---------------------------------------------------------------------------------------
CONFIGS = [
    ("bernoulli", {}),
    ("continuous-bernoulli", {}),
    ("gaussian", {"variance": "fixed"}),
    ("gaussian", {"variance": "learned-logvar", "variance_l2": 0.1}),
    ("gaussian", {"variance": "relu"}),
    ("gaussian", {"variance": "softplus", "sigmoid_mean": True}),
    ("gaussian", {"variance": "shared"}),
    ("discretized-logistic", {}),
    ("discretized-logistic-mixture", {"n_mixtures": 3}),
]
CONFIG_IDS = [f"{n}-{'-'.join(map(str, kw.values()))}" for n, kw in CONFIGS]


@pytest.mark.parametrize("event_shape", [(1, 28, 28), (3, 32, 32), (500,)])
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_shapes(name, kwargs, event_shape):
    lik = build_likelihood(name, event_shape, **kwargs)
    b = 3
    params = torch.randn(b, lik.n_params, *event_shape, generator=gen())
    x = torch.randint(0, 256, (b, *event_shape), generator=gen(1)).float() / 255
    if lik.binary:
        x = x.round()
    lp = lik.log_prob(params, x)
    assert lp.shape == (b,) and torch.isfinite(lp).all()
    assert lik.mean(params).shape == (b, *event_shape)
    assert lik.sample(params, generator=gen(2)).shape == (b, *event_shape)
    assert lik.penalty(params).shape == ()
    var = lik.variance(params)
    assert var is None if name != "gaussian" else var.shape == (b, *event_shape)


def test_log_prob_is_a_sum_not_a_mean_over_dimensions():
    one = build_likelihood("gaussian", (1,))
    many = build_likelihood("gaussian", (7,))
    params = torch.full((2, 1, 7), 0.25)
    x = torch.zeros(2, 7)
    torch.testing.assert_close(many.log_prob(params, x), 7 * one.log_prob(params[..., :1], x[:, :1]))


EXTREMES = {
    "bernoulli": [[-50.0, 50.0, 0.0, 1e-6]],
    "continuous-bernoulli": [[-50.0, 50.0, 0.0, 1e-6]],
    "gaussian-learned-logvar": [[0.0, 1.0, -3.0, 0.5], [-30.0, 30.0, -30.0, 30.0]],
    "gaussian-relu": [[0.0, 1.0, -3.0, 0.5], [-5.0, -1e-3, -100.0, 0.0]],
    "gaussian-softplus": [[0.0, 1.0, -3.0, 0.5], [-100.0, 100.0, -30.0, 0.0]],
    "discretized-logistic": [[-5.0, 6.0, 0.5, 0.5], [-30.0, 30.0, -40.0, 90.0]],
    "discretized-logistic-mixture": [[-50.0, 50.0, 0.0, 0.0], [50.0, -50.0, 0.0, 0.0],
                                     [-5.0, 6.0, 0.5, 0.5], [0.3, 0.2, 0.5, 1.0],
                                     [-30.0, 30.0, -40.0, 20.0], [0.0, -2.0, -9.0, -30.0]],
}


@pytest.mark.parametrize("key", list(EXTREMES))
def test_gradients_finite_for_extreme_params(key):
    name, _, variance = key.partition("-") if key.startswith("gaussian") else (key, "", "")
    kwargs = {"variance": variance} if variance else {}
    if name == "discretized-logistic-mixture":
        kwargs["n_mixtures"] = 2
    lik = build_likelihood(name, (4,), **kwargs)
    params = torch.tensor(EXTREMES[key]).unsqueeze(0).requires_grad_(True)
    assert params.shape[1] == lik.n_params
    x = torch.tensor([[0.0, 1.0, 0.5, 1.0]] if lik.binary else [[0.0, 1.0, 128 / 255, 3 / 255]])
    if lik.binary:
        x[0, 2] = 1.0
    loss = -lik.log_prob(params, x).sum() + lik.penalty(params)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(params.grad).all()


def test_relu_variance_below_zero_is_eps_only_with_zero_gradient():
    lik = build_likelihood("gaussian", (3,), variance="relu", variance_eps=1e-4)
    params = torch.tensor([[[0.1, 0.2, 0.3], [-1.0, -50.0, 0.5]]], requires_grad=True)
    torch.testing.assert_close(lik.variance(params)[0, :2], torch.full((2,), 1e-4))
    lik.log_prob(params, torch.tensor([[0.0, 1.0, 0.0]])).sum().backward()
    assert torch.isfinite(params.grad).all()
    assert torch.all(params.grad[0, 1, :2] == 0)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_penalty_is_zero_unless_configured(name, kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k != "variance_l2"}
    lik = build_likelihood(name, (2, 3), **kwargs)
    params = torch.randn(4, lik.n_params, 2, 3, generator=gen())
    assert lik.penalty(params).item() == 0.0


@pytest.mark.parametrize("variance", ["learned-logvar", "relu", "softplus", "shared"])
def test_variance_l2_penalty(variance):
    lik = build_likelihood("gaussian", (2, 3), variance=variance, variance_l2=0.25, logvar_init_bias=-1.0)
    params = torch.randn(4, lik.n_params, 2, 3, generator=gen())
    log_var = lik.variance(params).log()
    expected = 0.25 * (log_var**2).sum(dim=(1, 2)).mean()
    assert lik.penalty(params).item() > 0
    torch.testing.assert_close(lik.penalty(params), expected)


def test_init_bias_starts_every_learned_variance_at_exp_logvar_init_bias():
    assert build_likelihood("gaussian", (3,), variance="learned-logvar", logvar_init_bias=-2.0).init_bias() == {1: -2.0}
    for variance in ("relu", "softplus"):
        lik = build_likelihood("gaussian", (3,), variance=variance, logvar_init_bias=-2.0, variance_eps=1e-3)
        bias = lik.init_bias()
        params = torch.stack([torch.zeros(1, 3), torch.full((1, 3), bias[1])], 1)
        assert torch.allclose(lik.variance(params), torch.full((1, 3), math.exp(-2.0)), rtol=1e-5)
    for name, kwargs in CONFIGS:
        if kwargs.get("variance") in (None, "fixed", "shared"):
            assert build_likelihood(name, (3,), **kwargs).init_bias() == {}


def test_flags_and_param_counts():
    expected = {
        "bernoulli": (1, False, True),
        "continuous-bernoulli": (1, False, False),
        "gaussian": (1, False, False),
        "discretized-logistic": (2, True, False),
        "discretized-logistic-mixture": (15, True, False),
        "discretized-logistic-mixture-rgb": (20, True, False),
    }
    for name, (n_params, discrete, binary) in expected.items():
        lik = build_likelihood(name, (3, 2, 2))
        assert (lik.n_params, lik.discrete_8bit, lik.binary) == (n_params, discrete, binary), name
    for variance, n in [("fixed", 1), ("learned-logvar", 2), ("relu", 2), ("softplus", 2), ("shared", 1)]:
        assert build_likelihood("gaussian", (3,), variance=variance).n_params == n


# ---------------------------------------------------------------------------------------
# Bad settings
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kwargs, fragment",
    [
        ("poisson", {}, "bernoulli, continuous-bernoulli, gaussian"),
        ("gaussian", {"variance": "learned"}, "fixed, learned-logvar, relu, softplus, shared"),
        ("gaussian", {"sigma": 0.0}, "sigma"),
        ("gaussian", {"sigma": -1.0}, "sigma"),
        ("gaussian", {"sigma": float("nan")}, "sigma"),
        ("discretized-logistic-mixture", {"n_mixtures": 0}, "n_mixtures"),
        ("discretized-logistic-mixture", {"n_mixtures": 2.5}, "n_mixtures"),
        ("gaussian", {"variance": "relu", "variance_eps": -1e-4}, "variance_eps"),
        ("gaussian", {"variance": "learned-logvar", "variance_l2": -1.0}, "variance_l2"),
        ("gaussian", {"variance": "fixed", "variance_l2": 0.1}, "learned-logvar"),
        ("bernoulli", {"variance": "learned-logvar"}, "gaussian"),
        ("bernoulli", {"sigmoid_mean": True}, "gaussian"),
        ("continuous-bernoulli", {"variance_l2": 0.1}, "gaussian"),
        ("gaussian", {"logvar_init_bias": float("inf")}, "logvar_init_bias"),
    ],
)
def test_bad_settings_raise(name, kwargs, fragment):
    with pytest.raises(VaelabError, match=fragment) as info:
        build_likelihood(name, (1, 4, 4), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("event_shape", [(), (0, 3), (2.5,), "abc", None])
def test_bad_event_shape_raises(event_shape):
    with pytest.raises(VaelabError, match="event_shape"):
        build_likelihood("bernoulli", event_shape)


def test_mismatched_params_raise():
    lik = build_likelihood("gaussian", (1, 4, 4), variance="learned-logvar")
    with pytest.raises(VaelabError, match="n_params=2"):
        lik.log_prob(torch.zeros(2, 1, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(VaelabError, match="data of shape"):
        lik.log_prob(torch.zeros(2, 2, 1, 4, 4), torch.zeros(3, 1, 4, 4))


def test_names_are_exported():
    assert set(LIKELIHOODS) == {
        "bernoulli", "continuous-bernoulli", "gaussian", "discretized-logistic", "discretized-logistic-mixture",
        "discretized-logistic-mixture-rgb",
    }
    assert set(VARIANCES) == {"fixed", "learned-logvar", "relu", "softplus", "shared"}


def test_gaussian_8bit_bin_mass_matches_scipy_and_is_a_pmf():
    # one pixel at a time (event shape (1,)): means inside, at the edge and outside [0, 1];
    # standard deviations from far below a bin's width (1/255) to wider than the range
    lik = build_likelihood("gaussian", (1,), variance="learned-logvar")
    levels = torch.arange(256, dtype=torch.float64).view(256, 1) / 255
    for m, s in ((0.3, 0.1), (0.0, 1e-6), (0.999, 2.0), (1.3, 0.05), (0.5 + 0.2 / 255, 1e-4)):
        params = torch.tensor([[[m], [2 * math.log(s)]]], dtype=torch.float64).expand(256, 2, 1)
        got = lik.log_prob_8bit(params, levels)
        lo = np.concatenate([[-np.inf], (np.arange(1, 256) - 0.5) / 255])
        hi = np.concatenate([(np.arange(0, 255) + 0.5) / 255, [np.inf]])
        # scipy's difference taken in the tail it lies in (1 - cdf loses digits above the mean)
        expected = np.where(lo > m, stats.norm.sf(lo, m, s) - stats.norm.sf(hi, m, s),
                            stats.norm.cdf(hi, m, s) - stats.norm.cdf(lo, m, s))
        big = expected > 1e-250
        np.testing.assert_allclose(got.numpy()[big], np.log(expected[big]), rtol=1e-7, atol=1e-10)
        assert float(torch.logsumexp(got, 0)) == pytest.approx(0.0, abs=1e-9)  # a pmf over the 256 levels
