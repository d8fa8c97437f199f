"""Observation models p(x|z): turn the decoder's parameter maps into log-likelihoods, means and samples.

Layout: the decoder outputs ``params`` of shape ``(B, n_params, *event_shape)``; map ``i`` is
``params[:, i]``. ``event_shape`` is the shape of one example: ``(C, H, W)`` or ``(D,)``.

Units: every ``log_prob`` is in nats per example, SUMMED over the dimensions of one example
(never a mean over pixels), shape ``(B,)``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import VaelabError

LIKELIHOODS = (
    "bernoulli",
    "continuous-bernoulli",
    "gaussian",
    "discretized-logistic",
    "discretized-logistic-mixture",
    "discretized-logistic-mixture-rgb",
)
VARIANCES = ("fixed", "learned-logvar", "relu", "softplus", "shared")

_LOG_2PI = math.log(2.0 * math.pi)
_LEVELS = 255  # 8-bit data: x = u / 255 with u in 0..255, so 256 values and bins of width 1/255


def _sum_event(t: Tensor) -> Tensor:
    """(B, *event) -> (B,): the per-example total (the units contract: summed, not averaged)."""
    return t.flatten(1).sum(1)


class Likelihood(nn.Module):
    """Base class: p(x | params) for a batch, with the parameters laid out as maps.

    Subclasses set ``n_params`` (maps per data dimension), ``discrete_8bit`` (log_prob is a pmf
    over x = u/255) and ``binary`` (log_prob is a pmf over {0, 1}).
    """

    name = ""
    n_params = 1
    discrete_8bit = False
    binary = False

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(int(d) for d in event_shape)

    # --- the interface -------------------------------------------------------------------
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) in nats per example, summed over event dims: shape (B,)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The distribution's mean, (B, *event_shape): what reconstructions show."""
        raise NotImplementedError

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw per example, (B, *event_shape)."""
        raise NotImplementedError

    def penalty(self, params: Tensor) -> Tensor:
        """Scalar regulariser added to the loss; zero unless configured."""
        return params.new_zeros(())

    def variance(self, params: Tensor) -> Tensor | None:
        """The decoder's variance per dimension where the model has one (Gaussian); else None."""
        return None

    def init_bias(self) -> dict[int, float]:
        """Param-map index -> initial bias of the decoder's last layer for that map."""
        return {}

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, n_params={self.n_params}"

    # --- helpers -------------------------------------------------------------------------
    def _check_params(self, params: Tensor) -> None:
        expected = (self.n_params, *self.event_shape)
        if params.dim() != len(expected) + 1 or tuple(params.shape[1:]) != expected:
            raise VaelabError(
                f"{self.name} likelihood expects decoder params of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(params.shape)}; build the decoder with n_params={self.n_params} "
                f"and output shape {self.event_shape}"
            )

    def _check_x(self, params: Tensor, x: Tensor) -> Tensor:
        self._check_params(params)
        expected = (params.shape[0], *self.event_shape)
        if tuple(x.shape) != expected:
            raise VaelabError(
                f"{self.name} likelihood got data of shape {tuple(x.shape)} for params of shape "
                f"{tuple(params.shape)}; expected {expected}"
            )
        return x.to(params.dtype)

    @staticmethod
    def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
        """U[0,1) noise, kept strictly inside (0, 1) so logs of it and of 1-u stay finite."""
        eps = torch.finfo(like.dtype).eps
        u = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return u.clamp(eps, 1.0 - eps)


# ---------------------------------------------------------------------------------------
# Bernoulli and continuous Bernoulli
# ---------------------------------------------------------------------------------------
class Bernoulli(Likelihood):
    """Independent Bernoulli per dimension; params[:, 0] are logits.

    For x in [0, 1] (not just {0, 1}) log_prob is the usual cross-entropy, which is not a
    normalised density; ``binary`` stays True because it is a pmf only over {0, 1}.
    """

    name = "bernoulli"
    binary = True

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = self._check_x(params, x)
        # BCE-with-logits is the numerically stable form of x log p + (1-x) log(1-p)
        return -_sum_event(F.binary_cross_entropy_with_logits(params[:, 0], x, reduction="none"))

    def mean(self, params: Tensor) -> Tensor:
        self._check_params(params)
        return torch.sigmoid(params[:, 0])

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean(params), generator=generator)


# Below these |logit| values the closed forms cancel badly; the Taylor series are exact to
# float64 precision there (the next terms are ~1e-16 for log C and ~1e-11 for the mean).
_CB_NORM_TAYLOR = 1e-2
_CB_MEAN_TAYLOR = 0.5
_CB_ICDF_TAYLOR = 1e-4


def _cb_log_norm(logits: Tensor) -> Tensor:
    """log C(lambda) of the continuous Bernoulli, in logits eta: C = eta / tanh(eta / 2) (even)."""
    a = logits.abs()
    small = a < _CB_NORM_TAYLOR
    # the unused branch must stay finite, or torch.where would pass NaN gradients through it
    safe = torch.where(small, torch.ones_like(a), a)
    exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))
    a2 = logits * logits
    taylor = math.log(2.0) + a2 / 12 - 7 * a2 * a2 / 1440
    return torch.where(small, taylor, exact)


def _cb_mean(logits: Tensor) -> Tensor:
    """E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)) = 1/2 + coth(eta/2)/2 - 1/eta."""
    small = logits.abs() < _CB_MEAN_TAYLOR
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = 0.5 + 0.5 / torch.tanh(safe / 2) - 1 / safe
    e = logits
    e2 = e * e
    taylor = 0.5 + e * (1 / 12 - e2 * (1 / 720 - e2 * (1 / 30240 - e2 / 1209600)))
    return torch.where(small, taylor, exact)


def _cb_icdf(logits: Tensor, u: Tensor) -> Tensor:
    """Inverse CDF: x = log1p(u * expm1(eta)) / eta.

    Evaluated for eta <= 0 only (expm1 cannot overflow there) and mirrored for eta > 0, using
    X ~ CB(eta)  <=>  1 - X ~ CB(-eta).
    """
    neg = -logits.abs()
    v = torch.where(logits > 0, 1 - u, u)
    small = neg > -_CB_ICDF_TAYLOR
    safe = torch.where(small, -torch.ones_like(neg), neg)
    exact = torch.log1p(v * torch.expm1(safe)) / safe
    taylor = v + neg * v * (1 - v) / 2
    y = torch.where(small, taylor, exact).clamp(0, 1)
    return torch.where(logits > 0, 1 - y, y)


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a density on [0, 1]; params[:, 0] are logits.

    log p(x) = x log lambda + (1-x) log(1-lambda) + log C(lambda), with log C computed from the
    logits directly (no probabilities that round to 0 or 1) and a Taylor series near lambda = 1/2.
    """

    name = "continuous-bernoulli"

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = self._check_x(params, x)
        logits = params[:, 0]
        unnormalised = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return _sum_event(unnormalised + _cb_log_norm(logits))

    def mean(self, params: Tensor) -> Tensor:
        """The CB mean, which is not lambda (it is pulled towards 1/2)."""
        self._check_params(params)
        return _cb_mean(params[:, 0])

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_params(params)
        logits = params[:, 0]
        return _cb_icdf(logits, self._uniform(logits, generator))


# ---------------------------------------------------------------------------------------
# Gaussian
# ---------------------------------------------------------------------------------------
class Gaussian(Likelihood):
    """Independent Gaussian per dimension; params[:, 0] is the mean (through a sigmoid if asked).

    The variance comes from ``variance``:

    - ``"fixed"``: sigma**2, a setting (Doersch); one map.
    - ``"learned-logvar"``: params[:, 1] is log sigma**2 (Kingma); its decoder bias starts at
      ``logvar_init_bias`` (see :meth:`init_bias`).
    - ``"relu"``: sigma**2 = relu(params[:, 1]) + variance_eps. With ``variance_eps=0`` any
      v <= 0 gives sigma**2 = 0 and a non-finite log_prob (log 0 and a division by 0): this is
      the real NaN trigger that the eps floor fixes.
    - ``"softplus"``: sigma**2 = softplus(params[:, 1]) + variance_eps.
    - ``"shared"``: one learned log sigma**2 per data dimension, shared by all inputs
      (an ``nn.Parameter`` of ``event_shape`` starting at ``logvar_init_bias``); one map.

    log_prob is the full normalised density, including -0.5 log(2 pi sigma**2).
    ``variance_l2`` adds variance_l2 * mean over the batch of sum over dims of (log sigma**2)**2.
    """

    name = "gaussian"

    def __init__(
        self,
        event_shape: tuple[int, ...],
        variance: str = "fixed",
        sigma: float = 1.0,
        variance_eps: float = 1e-4,
        logvar_init_bias: float = 0.0,
        variance_l2: float = 0.0,
        sigmoid_mean: bool = False,
    ):
        super().__init__(event_shape)
        self.variance_kind = variance
        self.sigma = float(sigma)
        self.variance_eps = float(variance_eps)
        self.logvar_init_bias = float(logvar_init_bias)
        self.variance_l2 = float(variance_l2)
        self.sigmoid_mean = bool(sigmoid_mean)
        self.n_params = 1 if variance in ("fixed", "shared") else 2
        if variance == "shared":
            self.shared_logvar = nn.Parameter(torch.full(self.event_shape, self.logvar_init_bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variance={self.variance_kind!r}, sigmoid_mean={self.sigmoid_mean}"

    def _mean(self, params: Tensor) -> Tensor:
        m = params[:, 0]
        return torch.sigmoid(m) if self.sigmoid_mean else m

    def _log_var_and_var(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(log sigma**2, sigma**2), each broadcastable to (B, *event_shape)."""
        kind = self.variance_kind
        if kind == "fixed":
            var = params.new_full((), self.sigma**2)
            return var.log(), var
        if kind == "learned-logvar":
            log_var = params[:, 1]
            return log_var, log_var.exp()
        if kind == "shared":
            log_var = self.shared_logvar.to(params.dtype)
            return log_var, log_var.exp()
        squash = F.relu if kind == "relu" else F.softplus
        var = squash(params[:, 1]) + self.variance_eps
        return var.log(), var

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = self._check_x(params, x)
        mean = self._mean(params)
        log_var, var = self._log_var_and_var(params)
        return _sum_event(-0.5 * (_LOG_2PI + log_var + (x - mean) ** 2 / var))

    def mean(self, params: Tensor) -> Tensor:
        self._check_params(params)
        return self._mean(params)

    def variance(self, params: Tensor) -> Tensor:
        self._check_params(params)
        _, var = self._log_var_and_var(params)
        return var.expand(params.shape[0], *self.event_shape)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean = self.mean(params)
        _, var = self._log_var_and_var(params)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + var.sqrt() * noise

    def log_prob_8bit(self, params: Tensor, x: Tensor) -> Tensor:
        """log P(u) of the 8-bit pixels u = 255 x: the Gaussian's exact mass on each pixel's
        bin [x - 1/510, x + 1/510], the edge bins taking the tails below 0 and above 1.

        A pmf over the 256 levels, so -log P is a code length (bits/dim) whatever the
        variance; the density at the grid points is not (a variance that shrinks on constant
        pixels makes it unbounded). Summed over the event, (B,).
        """
        x = self._check_x(params, x)
        mean = self._mean(params)
        _, var = self._log_var_and_var(params)
        inv_std = var.rsqrt()
        half = 0.5 / 255.0
        upper = torch.where(x > 1 - half, torch.full_like(x, math.inf), (x + half - mean) * inv_std)
        lower = torch.where(x < half, torch.full_like(x, -math.inf), (x - half - mean) * inv_std)
        return _sum_event(_log_normal_mass(lower, upper))

    def penalty(self, params: Tensor) -> Tensor:
        """L2 penalty on the variance head: variance_l2 * E_batch[sum_dims (log sigma**2)**2]."""
        self._check_params(params)
        if self.variance_l2 == 0.0:
            return params.new_zeros(())
        log_var, _ = self._log_var_and_var(params)
        log_var = log_var.expand(params.shape[0], *self.event_shape)
        return self.variance_l2 * _sum_event(log_var**2).mean()

    def init_bias(self) -> dict[int, float]:
        """Decoder output biases that centre every learned variance at exp(logvar_init_bias).

        For relu and softplus the raw output v gives sigma**2 = squash(v) + eps; a bias of 0
        would start half the relu variances at eps itself, where (x - mean)**2 / eps makes the
        first steps' loss and gradients enormous (an earlier svhn-conv-gaussian stayed noise).
        """
        kind, target = self.variance_kind, math.exp(self.logvar_init_bias)
        if kind == "learned-logvar":
            return {1: self.logvar_init_bias}
        if kind == "relu":
            return {1: max(target - self.variance_eps, 0.0)}
        if kind == "softplus":
            v = max(target - self.variance_eps, 1e-6)
            return {1: v + math.log(-math.expm1(-v))}  # softplus^-1(v)
        return {}


# ---------------------------------------------------------------------------------------
# Discretized logistic (PixelCNN++, Salimans et al. 2017) for 8-bit data x = u / 255
# ---------------------------------------------------------------------------------------
# Below scale e^-30 every bin's mass is already exactly 0 or 1 in float32; the floor only keeps
# 1/scale finite (and its gradient is zero there, where the loss is flat anyway).
_LOG_SCALE_MIN = -30.0
_LOG_SCALE_MAX = 80.0  # keeps exp(log_scale) finite when sampling


def _log_normal_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, stable in both tails: a bin above
    the mean is measured from the upper tail (Phi(-lower) - Phi(-upper)) so the difference
    never cancels near 1."""
    flip = lower > 0
    lo = torch.where(flip, -upper, lower)
    hi = torch.where(flip, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    # log(e^a - e^b) = a + log(-expm1(b - a)); a bin far in the tail underflows to -inf, as it should
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def _dlogistic_log_pmf(mean: Tensor, log_scale: Tensor, x: Tensor) -> Tensor:
    """log P(bin of x) for a logistic(mean, e^log_scale) cut into 256 bins of width 1/255.

    Bins are centred on u/255, the two edge bins extend to -inf and +inf, and x is snapped to
    its nearest level. The bin mass sigmoid(a) - sigmoid(b), a > b, is taken in log space as
    -softplus(-a) - softplus(b) + log(1 - e^(b - a)), which neither cancels nor underflows in
    either tail; where the bin's width in scale units underflows to 0 the mid-bin density
    times the bin width is used instead.
    """
    log_scale = log_scale.clamp_min(_LOG_SCALE_MIN)
    inv_scale = torch.exp(-log_scale)
    level = torch.round(x.clamp(0, 1) * _LEVELS)
    # edges as (level +- 0.5) / 255 so neighbouring bins share bit-identical edges and the
    # masses telescope to exactly 1 even when the scale is tiny
    upper = inv_scale * ((level + 0.5) / _LEVELS - mean)  # standardised upper edge of the bin
    lower = inv_scale * ((level - 0.5) / _LEVELS - mean)
    width = inv_scale / _LEVELS  # upper - lower, computed without cancellation
    tiny = torch.finfo(width.dtype).tiny
    first_bin = -F.softplus(-upper)  # log P(X < 0.5/255)
    last_bin = -F.softplus(lower)  # log P(X > 254.5/255)
    log_mass = first_bin + last_bin + torch.log(-torch.expm1(-width.clamp_min(tiny)))
    mid = inv_scale * (level / _LEVELS - mean)
    log_mid_density = mid - 2 * F.softplus(mid) - log_scale - math.log(_LEVELS)
    interior = torch.where(width > tiny, log_mass, log_mid_density)
    return torch.where(level == 0, first_bin, torch.where(level == _LEVELS, last_bin, interior))


def _dlogistic_mean(mean: Tensor, log_scale: Tensor, chunk: int = 16) -> Tensor:
    """Exact mean of the discretised distribution: E[u]/255 = (1/255) sum_{k=1..255} P(u >= k).

    Not the logistic's ``mean`` parameter: clipping and rounding move it (towards the middle
    near the edges). Levels are processed in chunks to bound memory.
    """
    inv_scale = torch.exp(-log_scale.clamp_min(_LOG_SCALE_MIN))
    lower_edges = (torch.arange(1, _LEVELS + 1, dtype=mean.dtype, device=mean.device) - 0.5) / _LEVELS
    total = torch.zeros_like(mean)
    for edges in lower_edges.split(chunk):
        edges = edges.view(-1, *([1] * mean.dim()))
        total = total + torch.sigmoid((mean - edges) * inv_scale).sum(0)
    return total / _LEVELS


def _dlogistic_sample(mean: Tensor, log_scale: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF logistic draw, clipped to [0, 1] and rounded to the nearest of the 256 levels."""
    scale = log_scale.clamp(_LOG_SCALE_MIN, _LOG_SCALE_MAX).exp()
    y = mean + scale * (torch.log(u) - torch.log1p(-u))
    return torch.round(y.clamp(0, 1) * _LEVELS) / _LEVELS


class DiscretizedLogistic(Likelihood):
    """Discretised logistic pmf over x = u/255; params[:, 0] is the mean, params[:, 1] the log-scale."""

    name = "discretized-logistic"
    n_params = 2
    discrete_8bit = True

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = self._check_x(params, x)
        return _sum_event(_dlogistic_log_pmf(params[:, 0], params[:, 1], x))

    def mean(self, params: Tensor) -> Tensor:
        self._check_params(params)
        return _dlogistic_mean(params[:, 0], params[:, 1])

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_params(params)
        mean = params[:, 0]
        return _dlogistic_sample(mean, params[:, 1], self._uniform(mean, generator))


class DiscretizedLogisticMixture(Likelihood):
    """Mixture of K discretised logistics, independent per dimension (no channel coupling).

    Layout: params[:, :K] mixture logits, params[:, K:2K] means, params[:, 2K:3K] log-scales.
    """

    name = "discretized-logistic-mixture"
    discrete_8bit = True

    def __init__(self, event_shape: tuple[int, ...], n_mixtures: int = 5):
        super().__init__(event_shape)
        self.n_mixtures = int(n_mixtures)
        self.n_params = 3 * self.n_mixtures

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_mixtures={self.n_mixtures}"

    def _components(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, means, log_scales), each (B, K, *event_shape)."""
        self._check_params(params)
        p = params.unflatten(1, (3, self.n_mixtures))
        return p[:, 0], p[:, 1], p[:, 2]

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = self._check_x(params, x)
        logits, means, log_scales = self._components(params)
        log_weights = F.log_softmax(logits, dim=1)
        log_pmf = _dlogistic_log_pmf(means, log_scales, x.unsqueeze(1))
        return _sum_event(torch.logsumexp(log_weights + log_pmf, dim=1))

    def mean(self, params: Tensor) -> Tensor:
        logits, means, log_scales = self._components(params)
        return (F.softmax(logits, dim=1) * _dlogistic_mean(means, log_scales)).sum(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits, means, log_scales = self._components(params)
        # Gumbel-max picks a component per dimension with probability softmax(logits)
        gumbel = -torch.log(-torch.log(self._uniform(logits, generator)))
        pick = (logits + gumbel).argmax(dim=1, keepdim=True)
        mean = means.gather(1, pick).squeeze(1)
        log_scale = log_scales.gather(1, pick).squeeze(1)
        return _dlogistic_sample(mean, log_scale, self._uniform(mean, generator))


_INIT_LOG_SCALE = -3.0


class DiscretizedLogisticMixtureRGB(Likelihood):
    """PixelCNN++'s mixture of discretised logistics over RGB pixels (Salimans et al. 2017).

    Each pixel is one K-component mixture over its three 8-bit values; inside a component the
    channels are coupled linearly: mu_G = m_G + a x_R, mu_B = m_B + b x_R + c x_G (a, b, c
    through tanh). Each channel's factor is a pmf over 256 levels given the earlier ones, so a
    pixel's probabilities sum to 1 over all 256^3 colours.

    Layout: ``n_params = 4K`` maps per channel; channel ch of maps [0:K] holds logits (the
    mixture logit is their sum over the three channels), [K:2K] the means m, [2K:3K] the
    log-scales, [3K:4K] the coupling coefficients (a, b, c in channels R, G, B).
    """

    name = "discretized-logistic-mixture-rgb"
    discrete_8bit = True

    def __init__(self, event_shape: tuple[int, ...], n_mixtures: int = 10):
        super().__init__(event_shape)
        if len(self.event_shape) != 3 or self.event_shape[0] != 3:
            raise VaelabError(
                f"the discretized-logistic-mixture-rgb likelihood needs RGB images (3, H, W), got shape "
                f"{self.event_shape}; use data.channels=3, or likelihood discretized-logistic-mixture for other data"
            )
        self.n_mixtures = int(n_mixtures)
        self.n_params = 4 * self.n_mixtures

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_mixtures={self.n_mixtures}"

    def init_bias(self) -> dict[int, float]:
        """Components that start spread over [0, 1] at scale e^-3 (about 13 levels): from a
        decoder bias of 0 (every component black, scale 1) Adam would need thousands of steps
        to move the scales' biases to where 8-bit images want them."""
        k = self.n_mixtures
        return {**{k + i: (i + 0.5) / k for i in range(k)}, **{2 * k + i: _INIT_LOG_SCALE for i in range(k)}}

    def _components(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(mixture logits (B, K, H, W), means, log-scales, tanh'd coefficients (B, K, 3, H, W))."""
        self._check_params(params)
        # unbind, not p[:, i]: the backward of each index would fill a zero tensor of p's size
        logits, means, log_scales, coeffs = params.unflatten(1, (4, self.n_mixtures)).unbind(1)
        return logits.sum(2), means, log_scales, torch.tanh(coeffs)

    @staticmethod
    def _coupled(means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
        """Each channel's logistic location given the earlier channels' values x (B, 1, 3, H, W)."""
        r, g, _ = x.unbind(2)
        m_r, m_g, m_b = means.unbind(2)
        a, b, c = coeffs.unbind(2)
        return torch.stack((m_r, m_g + a * r, m_b + b * r + c * g), dim=2)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = self._check_x(params, x)
        logits, means, log_scales, coeffs = self._components(params)
        x = (torch.round(x.clamp(0, 1) * _LEVELS) / _LEVELS).unsqueeze(1)  # the levels the pmf is over
        log_pmf = _dlogistic_log_pmf(self._coupled(means, coeffs, x), log_scales, x).sum(2)  # (B, K, H, W)
        return _sum_event(torch.logsumexp(F.log_softmax(logits, dim=1) + log_pmf, dim=1))

    def mean(self, params: Tensor) -> Tensor:
        """Each component's mean with the coupling applied to the earlier channels' means: exact
        but for the clipping at 0 and 1, which makes the true coupled mean slightly nonlinear."""
        logits, means, log_scales, coeffs = self._components(params)
        r = _dlogistic_mean(means[:, :, 0], log_scales[:, :, 0])
        g = _dlogistic_mean(means[:, :, 1] + coeffs[:, :, 0] * r, log_scales[:, :, 1])
        b = _dlogistic_mean(means[:, :, 2] + coeffs[:, :, 1] * r + coeffs[:, :, 2] * g, log_scales[:, :, 2])
        return (F.softmax(logits, dim=1).unsqueeze(2) * torch.stack((r, g, b), dim=2)).sum(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits, means, log_scales, coeffs = self._components(params)
        gumbel = -torch.log(-torch.log(self._uniform(logits, generator)))
        pick = (logits + gumbel).argmax(dim=1, keepdim=True)  # one component per pixel, (B, 1, H, W)
        take = lambda t: t.gather(1, pick.unsqueeze(2).expand(-1, -1, 3, -1, -1)).squeeze(1)  # noqa: E731
        m, s, c = take(means), take(log_scales), take(coeffs)
        u = self._uniform(m, generator)
        r = _dlogistic_sample(m[:, 0], s[:, 0], u[:, 0])
        g = _dlogistic_sample(m[:, 1] + c[:, 0] * r, s[:, 1], u[:, 1])
        b = _dlogistic_sample(m[:, 2] + c[:, 1] * r + c[:, 2] * g, s[:, 2], u[:, 2])
        return torch.stack((r, g, b), dim=1)


# ---------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------
def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_event_shape(event_shape) -> tuple[int, ...]:
    try:
        shape = tuple(event_shape)
        ok = len(shape) > 0 and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape
        )
    except TypeError:
        ok = False
    if not ok:
        raise VaelabError(
            f"event_shape must be a non-empty tuple of positive ints such as (1, 28, 28) or (500,), got {event_shape!r}"
        )
    return tuple(int(d) for d in shape)


def _gaussian_settings(settings: dict) -> SimpleNamespace:
    """``settings`` completed with :class:`Gaussian`'s defaults: its signature is the one list
    of these settings, so the factory below cannot drift from it (an unknown name is a
    TypeError, as in any call)."""
    bound = inspect.signature(Gaussian).bind_partial(**settings)
    bound.apply_defaults()
    return SimpleNamespace(**bound.arguments)


#: name -> the observation model's class (its constructor takes the event shape, then its own settings)
_CLASSES = {
    "bernoulli": Bernoulli,
    "continuous-bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
    "discretized-logistic": DiscretizedLogistic,
    "discretized-logistic-mixture": DiscretizedLogisticMixture,
    "discretized-logistic-mixture-rgb": DiscretizedLogisticMixtureRGB,
}
assert tuple(_CLASSES) == LIKELIHOODS

#: the ModelConfig keys the observation models read, beside model.likelihood itself
CONFIG_KEYS = ("variance", "sigma", "variance_eps", "logvar_init_bias", "variance_l2", "sigmoid_mean", "n_mixtures")


def likelihood_from_config(model_config, event_shape: tuple[int, ...]) -> Likelihood:
    """The observation model a ModelConfig describes; a bad setting is a VaelabError naming its key."""
    settings = {key: getattr(model_config, key) for key in CONFIG_KEYS}
    return build_likelihood(model_config.likelihood, event_shape, prefix="model.", **settings)


def build_likelihood(name: str, event_shape: tuple[int, ...], *, n_mixtures: int = 5, prefix: str = "",
                     **gaussian) -> Likelihood:
    """The observation model called ``name`` for examples of shape ``event_shape``.

    ``gaussian`` are :class:`Gaussian`'s keyword settings (variance, sigma, variance_eps,
    logvar_init_bias, variance_l2, sigmoid_mean), with its defaults. Numeric settings are
    range-checked always and ignored where they do not apply (``sigma`` outside
    variance="fixed", ``n_mixtures`` outside the mixture). Settings that change the model
    (``variance`` other than "fixed", ``sigmoid_mean``, ``variance_l2``) raise where they
    would be silently ignored.
    """
    if name not in LIKELIHOODS:
        raise VaelabError(f"unknown {prefix}likelihood {name!r}; choose one of: {', '.join(LIKELIHOODS)}")
    g = _gaussian_settings(gaussian)
    if g.variance not in VARIANCES:
        raise VaelabError(f"unknown {prefix}variance {g.variance!r}; choose one of: {', '.join(VARIANCES)}")
    shape = _check_event_shape(event_shape)
    if not (_is_real(g.sigma) and math.isfinite(g.sigma) and g.sigma > 0):
        raise VaelabError(f"{prefix}sigma must be a positive finite number, got {g.sigma!r}; e.g. {prefix}sigma=1.0")
    if not (_is_real(g.variance_eps) and math.isfinite(g.variance_eps) and g.variance_eps >= 0):
        raise VaelabError(f"{prefix}variance_eps must be a finite number >= 0, got {g.variance_eps!r}; "
                          f"e.g. {prefix}variance_eps=1e-4")
    if not (_is_real(g.variance_l2) and math.isfinite(g.variance_l2) and g.variance_l2 >= 0):
        raise VaelabError(f"{prefix}variance_l2 must be a finite number >= 0, got {g.variance_l2!r}; use 0 to turn it off")
    # exp(80) is still a float32 variance; beyond it the starting variance overflows
    if not (_is_real(g.logvar_init_bias) and math.isfinite(g.logvar_init_bias) and abs(g.logvar_init_bias) <= 80):
        raise VaelabError(f"{prefix}logvar_init_bias must be a number from -80 to 80 (a log-variance), got "
                          f"{g.logvar_init_bias!r}; e.g. 0.0")
    if isinstance(n_mixtures, bool) or not isinstance(n_mixtures, numbers.Integral) or n_mixtures < 1:
        raise VaelabError(f"{prefix}n_mixtures must be an integer >= 1, got {n_mixtures!r}; e.g. {prefix}n_mixtures=5")

    if name != "gaussian":
        if g.variance != "fixed":
            raise VaelabError(
                f"variance={g.variance!r} applies only to the gaussian likelihood, not {name!r}; "
                f"remove it or use likelihood 'gaussian'"
            )
        if g.sigmoid_mean:
            raise VaelabError(f"sigmoid_mean applies only to the gaussian likelihood, not {name!r}; set it to false")
        if g.variance_l2 > 0:
            raise VaelabError(
                f"variance_l2 applies only to a gaussian with a learned variance, not {name!r}; set it to 0"
            )
    elif g.variance == "fixed" and g.variance_l2 > 0:
        raise VaelabError(
            "variance_l2 needs a learned variance but variance='fixed'; set variance_l2 = 0 or choose one of: "
            + ", ".join(v for v in VARIANCES if v != "fixed")
        )

    if name == "gaussian":
        return Gaussian(shape, **vars(g))  # Gaussian converts the numbers to float and bool itself
    if name.startswith("discretized-logistic-mixture"):
        return _CLASSES[name](shape, n_mixtures=int(n_mixtures))
    return _CLASSES[name](shape)
