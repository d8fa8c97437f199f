"""An independent reference for `vaelab eval`'s importance-weighted log-likelihood.

For every family (N(0, I), mixture and VampPrior priors, IAF, the ladder, M2's marginal over
classes) a small model is trained for a moment on the built-in MNIST sample, and log p(x) of
a few test images is estimated twice: by vaelab's evaluator (Run.evaluate and the model's
log_likelihood, float32), and here, in float64, from the networks' raw outputs alone
(encoder means and log-variances, decoder logits, prior parameters, MADE outputs), with
the densities, the precision-weighted ladder posterior, the flow's Jacobian (by autograd)
and log-mean-exp written out in this file:

    log p(x) ~ log (1/K) sum_k exp(log p(x|z_k) + log p(z_k) - log q(z_k|x)),  z_k ~ q(z|x).

No vaelab estimator, likelihood, prior or posterior code is called. The two must agree
within a few Monte-Carlo standard errors (delta method: sd(w) / (sqrt(K) mean(w))).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import vaelab
from vaelab.config import Config
from vaelab.rundir.load import load_run

LOG_2PI = math.log(2 * math.pi)
K = 1000
K_M2 = 300  # M2 decodes every class for every sample
N_IMAGES = 6
SAME_DRAWS_TOLERANCE = 0.02  # nats: float32 against float64 on log-likelihoods of about -100 to -300
BASE = ["data.name=mnist-sample", "data.limit=1000", "data.val_fraction=0.2", "model.latent_dim=4",
        "model.hidden=[64]", "train.batch_size=50", "train.epochs=2", "train.device=cpu", "train.threads=1",
        "train.lr=0.003"]
FAMILIES = {
    "standard-normal": [],
    "mog": ["model.prior=mog", "model.prior_components=7"],
    "vamp": ["model.prior=vamp", "model.prior_components=7"],
    "iaf": ["model.flow_steps=2", "model.flow_hidden=[16]"],
    "ladder": ["model.family=ladder", "model.ladder_dims=[6]", "model.hidden=[64,32]"],
    "ladder-vamp": ["model.family=ladder", "model.ladder_dims=[6]", "model.hidden=[64,32]", "model.prior=vamp",
                    "model.prior_components=7"],
    "m2": ["model.family=m2", "data.labelled=50", "train.labelled_batch=20"],
}


# -- densities, written out -----------------------------------------------------------------

def normal_log_pdf(z, mean, logvar):
    """log N(z; mean, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * (LOG_2PI + logvar + (z - mean) ** 2 / torch.exp(logvar)).sum(-1)


def bernoulli_log_pmf(decoder_out, x):
    """Bernoulli log-pmf of binary x under the decoder's logits (its first parameter map), summed per image."""
    logits = decoder_out[:, 0].flatten(1)
    x = x.flatten(1)
    return (x * logits - F.softplus(logits)).sum(-1)


def mixture_log_pdf(z, means, logvars, log_weights):
    """log sum_c w_c N(z; mean_c, var_c) for z (..., L), components (C, L)."""
    per = normal_log_pdf(z.unsqueeze(-2), means, logvars)  # (..., C)
    return torch.logsumexp(per + log_weights, -1)


def gaussian_head(out):
    mean, logvar = out.chunk(2, -1)
    return mean, logvar


def draw(mean, logvar, eps):
    """Draws of N(mean, exp(logvar)) from standard-normal ``eps`` (K, B, L), and their log-density."""
    z = mean + torch.exp(0.5 * logvar) * eps
    return z, normal_log_pdf(z, mean, logvar)


def estimate(log_w):
    """log-mean-exp over the samples (axis 0), and its delta-method standard error, per image."""
    top = log_w.max(0).values
    w = torch.exp(log_w - top)
    mean = w.mean(0)
    return torch.log(mean) + top, w.std(0) / (math.sqrt(log_w.shape[0]) * mean)


# -- the families, from their networks' outputs ----------------------------------------------

def decode(m, z):
    """The decoder's outputs for (K, B, L) codes, (K, B, n_params, *event_shape)."""
    k, b = z.shape[:2]
    out = m.decoder(z.reshape(k * b, -1))
    return out.view(k, b, *out.shape[1:])


def log_px(m, z, x):
    out = decode(m, z)
    return bernoulli_log_pmf(out.flatten(0, 1), x.repeat(len(z), *[1] * (x.dim() - 1))).view(z.shape[:2])


def vae_log_weights(m, x, eps):
    h = m.encoder(x)
    mean, logvar = gaussian_head(m.posterior_head(h))
    z, log_q = draw(mean, logvar, eps)
    if m.flow is not None:
        z, log_det = iaf(m, z, h)
        log_q = log_q - log_det
    log_prior = prior_log_pdf(m.prior, z, lambda u: gaussian_head(m.posterior_head(m.encoder(u))))
    return log_px(m, z, x) + log_prior - log_q


def prior_log_pdf(prior, z, encode):
    if prior.name == "standard-normal":
        return normal_log_pdf(z, torch.zeros_like(z), torch.zeros_like(z))
    if prior.name == "mog":
        return mixture_log_pdf(z, prior.means, prior.logvars, torch.log_softmax(prior.logits, -1))
    assert prior.name == "vamp"
    means, logvars = encode(prior.pseudo_inputs.clamp(0.0, 1.0))  # the paper's hardtanh into [0, 1]
    n = means.shape[0]
    return mixture_log_pdf(z, means, logvars, torch.full((n,), -math.log(n), dtype=torch.float64))


def iaf(m, z0, h):
    """The flow's output and log|det dz_T/dz_0| for (K, B, L) draws: each step
    z <- sigmoid(g) z + (1 - sigmoid(g)) m with (m, s) from its MADE and g = s + forget bias,
    odd steps on the reversed vector; the determinant by autograd, not by the triangle rule."""
    def forward(z, context):
        for t, step in enumerate(m.flow.steps):
            inp = z.flip(-1) if t % 2 else z
            mu, s = step.made(inp.unsqueeze(0), context.unsqueeze(0))[0].unbind(-2)
            gate = torch.sigmoid(s + step.forget_bias)
            new = gate * inp + (1 - gate) * mu
            z = new.flip(-1) if t % 2 else new
        return z

    k, b, latent = z0.shape
    flat, ctx = z0.reshape(k * b, latent), h.repeat(k, 1)
    jac = torch.func.vmap(torch.func.jacrev(forward))(flat, ctx)
    out = torch.func.vmap(forward)(flat, ctx)
    return out.view(k, b, latent), torch.linalg.slogdet(jac)[1].view(k, b)


def ladder_log_weights(m, x, eps):
    """eps (K, B, all layers' sizes), the bottom layer's columns first."""
    def bottom_up(inp):
        estimates, d = [], inp
        for f, head in zip(m.up, m.up_heads):
            d = f(d)
            estimates.append(gaussian_head(head(d)))
        return estimates

    est = bottom_up(x)
    parts = eps.split(m.latent_dims, -1)
    z, log_q = draw(*est[-1], parts[-1])
    log_p = prior_log_pdf(m.prior, z, lambda u: bottom_up(u)[-1])
    for i in reversed(range(len(est) - 1)):
        k, b = z.shape[:2]
        p_mean, p_logvar = (t.reshape(k, b, -1) for t in gaussian_head(m.down[i](z.reshape(k * b, -1))))
        hat_mean, hat_logvar = est[i]
        var = 1 / (torch.exp(-hat_logvar) + torch.exp(-p_logvar))  # the two Gaussians multiplied
        mean = var * (hat_mean * torch.exp(-hat_logvar) + p_mean * torch.exp(-p_logvar))
        z, log_qi = draw(mean, var.log(), parts[i])
        log_q = log_q + log_qi
        log_p = log_p + normal_log_pdf(z, p_mean, p_logvar)
    return log_px(m, z, x) + log_p - log_q


def m2_log_likelihood(m, x, eps):
    """log p(x) = log sum_y p(y) p(x|y), each p(x|y) importance-weighted with q(z|x,y);
    eps (K, n_classes * B, L), class-major."""
    h, b = m.encoder(x), x.shape[0]
    per_class, errors = [], []
    for y in range(m.n_classes):
        onehot = F.one_hot(torch.full((b,), y), m.n_classes).double()
        z, log_q = draw(*gaussian_head(m.posterior_head(torch.cat([h, onehot], -1))), eps[:, y * b:(y + 1) * b])
        out = m.decoder(torch.cat([z, onehot.expand(len(z), -1, -1)], -1).flatten(0, 1))
        log_pxz = bernoulli_log_pmf(out, x.repeat(len(z), *[1] * (x.dim() - 1))).view(len(z), b)
        value, error = estimate(log_pxz + normal_log_pdf(z, torch.zeros_like(z), torch.zeros_like(z)) - log_q)
        per_class.append(value - math.log(m.n_classes))
        errors.append(error)
    stacked = torch.stack(per_class)
    share = torch.softmax(stacked, 0)  # each class's relative error counts by its share of p(x)
    return torch.logsumexp(stacked, 0), torch.sqrt((share ** 2 * torch.stack(errors) ** 2).sum(0))


def samples(model) -> int:
    return K_M2 if getattr(model, "uses_labels", False) else K


def noise_shape(model, batch):
    if getattr(model, "uses_labels", False):
        return (K_M2, model.n_classes * batch, model.latent_dim)
    return (K, batch, model.noise_dim)


def reference(model, x, eps):
    """(log p(x), its Monte-Carlo standard error) per image, in float64, from the draws eps."""
    m = copy.deepcopy(model).double().eval()
    x, eps = x.double(), eps.double()
    with torch.no_grad():
        if getattr(m, "uses_labels", False):
            return m2_log_likelihood(m, x, eps)
        return estimate((ladder_log_weights if hasattr(m, "up") else vae_log_weights)(m, x, eps))


# -- the check ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory):
    config = Config()
    config.apply_overrides(BASE + FAMILIES[request.param])
    out = vaelab.fit(config.validate(), tmp_path_factory.mktemp(request.param) / "run", progress=False)
    return request.param, load_run(out)


def test_the_same_draws_give_the_same_estimate(trained, one_torch_thread):
    """From the standard-normal draws vaelab's estimator takes (all K in one chunk), the
    float64 reference reproduces its log p(x) per image: the arithmetic is the same."""
    family, run = trained
    images, _ = run.images("test")
    x = run.transform.fixed(images[:N_IMAGES])  # the binary images eval scores (each drawn once from its own pixels)
    with torch.no_grad():
        k = samples(run.model)
        ours = run.model.log_likelihood(x, k, chunk=k, generator=torch.Generator().manual_seed(2)).double()
    eps = torch.randn(noise_shape(run.model, N_IMAGES), generator=torch.Generator().manual_seed(2))
    ref, _ = reference(run.model, x, eps)
    assert torch.allclose(ours, ref, rtol=0, atol=SAME_DRAWS_TOLERANCE), (family, ours, ref)


def test_vaelab_eval_agrees_with_the_reference_within_monte_carlo_error(trained, one_torch_thread):
    """`vaelab eval`'s path (Run.evaluate, its own seed and chunks) against the reference's own draws."""
    family, run = trained
    images, _ = run.images("test")
    images = images[:N_IMAGES]
    x = run.transform.fixed(images)
    eps = torch.randn(noise_shape(run.model, N_IMAGES), generator=torch.Generator().manual_seed(7))
    ref, err = reference(run.model, x, eps)
    evaluated = run.evaluate(images=images, iw_samples=samples(run.model))["nll_iw"]
    # both estimates carry Monte-Carlo error of about the same size (and the same O(1/K) bias)
    tolerance = 5 * math.sqrt(2) * float(err.pow(2).sum().sqrt()) / N_IMAGES
    assert abs(evaluated - float(-ref.mean())) <= tolerance, (family, evaluated, -ref.mean(), tolerance)


def test_the_reference_tells_a_wrong_prior_apart(trained, one_torch_thread):
    """The comparison can fail: a prior shifted by one standard deviation moves the estimate
    from the same draws by ten times the same-draws tolerance or more."""
    family, run = trained
    if family != "standard-normal":
        pytest.skip("one family shows it")
    images, _ = run.images("test")
    x = run.transform.fixed(images[:N_IMAGES]).double()
    eps = torch.randn(noise_shape(run.model, N_IMAGES), generator=torch.Generator().manual_seed(2)).double()
    m = copy.deepcopy(run.model).double().eval()
    with torch.no_grad():
        right, _ = estimate(vae_log_weights(m, x, eps))
        z, log_q = draw(*gaussian_head(m.posterior_head(m.encoder(x))), eps)
        wrong, _ = estimate(log_px(m, z, x) + normal_log_pdf(z, torch.ones_like(z), torch.zeros_like(z)) - log_q)
    assert torch.all((wrong - right).abs() > 10 * SAME_DRAWS_TOLERANCE)


def test_eval_scores_stochastically_binarized_images_like_the_papers():
    """The VampPrior and IWAE papers' test sets are binarized at random with P(x = 1) = u / 255,
    not thresholded; `vaelab eval` scores such a draw, made once per image."""
    from vaelab.transforms import DynamicBinarize

    u = torch.as_tensor(vaelab.load_dataset("mnist-sample", "test").images[:500])
    x = DynamicBinarize().fixed(u)
    grey = (u > 25) & (u < 230)  # the pixels a threshold would decide one way for certain
    assert abs(float(x[grey].mean()) - float(u[grey].double().mean() / 255)) < 0.01
    assert 0.1 < float(x[grey & (u < 128)].mean()) and float(x[grey & (u >= 128)].mean()) < 0.9
    assert torch.equal(x, DynamicBinarize().fixed(u))  # the same draw in every evaluation
