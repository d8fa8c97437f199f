"""MADE masks and IAF log-determinants against autograd Jacobians."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from vaelab.latent.flows import IAF, MADE, IAFStep, MaskedLinear

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L, C = 5, 3


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_masked_linear_applies_mask():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    layer = MaskedLinear(2, 3, mask)
    x = torch.randn(4, 2)
    torch.testing.assert_close(layer(x), x @ (layer.weight * mask).T + layer.bias)


@pytest.mark.parametrize("context_features", [0, C])
def test_made_is_strictly_autoregressive(context_features):
    torch.manual_seed(0)
    made = MADE(L, [16, 16], context_features, out_per_dim=2).double()
    z = torch.randn(L, dtype=torch.float64)
    h = torch.randn(1, C, dtype=torch.float64) if context_features else None
    jac = jacobian(lambda v: made(v[None], h)[0], z)  # (2, L, L): [p, i, j] = d out_pi / d z_j
    assert jac.shape == (2, L, L)
    upper = torch.ones(L, L, dtype=torch.bool).triu()  # j >= i: forbidden
    assert (jac[:, upper] == 0).all()
    assert (jac[:, ~upper] != 0).all()  # and every allowed connection is used


def test_made_output_depends_on_whole_context():
    torch.manual_seed(1)
    made = MADE(L, [12, 12], C).double()
    z = torch.randn(1, L, dtype=torch.float64)
    jac = jacobian(lambda h: made(z, h[None])[0], torch.randn(C, dtype=torch.float64))
    assert (jac != 0).all()  # even the first output, which sees no z, reads all of h


def test_made_construction_is_deterministic_and_needs_no_rng():
    state = torch.get_rng_state()
    a = MADE(L, [7, 9], C)
    torch.set_rng_state(state)
    b = MADE(L, [7, 9], C)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.mask, lb.mask)
    assert MADE(1, [4], C)(torch.randn(2, 1), torch.randn(2, C)).shape == (2, 2, 1)


def full_map_log_det(fn, z, h):
    """log|det d fn(z_b) / d z_b| for each example b, by autograd."""
    out = []
    for b in range(z.shape[0]):
        jac = jacobian(lambda v: fn(v[None], h[b:b + 1])[0][0], z[b])
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out), jac


def checked_log_det(flow):
    """Run ``flow`` on random z and context; its log_det must equal autograd's; returns the
    last example's Jacobian."""
    z = torch.randn(4, L, dtype=torch.float64)
    h = torch.randn(4, C, dtype=torch.float64)
    z_new, log_det = flow(z, h)
    assert z_new.shape == (4, L) and log_det.shape == (4,)
    ref, jac = full_map_log_det(flow, z, h)
    torch.testing.assert_close(log_det, ref)
    return jac


def test_iaf_step_log_det_matches_jacobian():
    torch.manual_seed(2)
    jac = checked_log_det(IAFStep(L, [16], C).double())
    assert (jac.triu(1) == 0).all()  # one step is lower triangular


@pytest.mark.parametrize("n_steps", [2, 3])
def test_iaf_log_det_matches_jacobian(n_steps):
    torch.manual_seed(3)
    jac = checked_log_det(IAF(L, n_steps, [16, 16], C).double())
    # the flips make the stacked map dense, yet the determinant still matches
    assert (jac.triu(1) != 0).any() and (jac.tril(-1) != 0).any()


def test_iaf_accepts_leading_sample_dims():
    torch.manual_seed(4)
    flow = IAF(L, 2, [16], C)
    z = torch.randn(3, 4, L)  # (K, B, L)
    h = torch.randn(4, C)
    z_t, log_det = flow(z, h)
    assert z_t.shape == (3, 4, L) and log_det.shape == (3, 4)
    for k in range(3):  # the same as running each sample's batch alone
        zk, ldk = flow(z[k], h)
        torch.testing.assert_close(z_t[k], zk)
        torch.testing.assert_close(log_det[k], ldk)


def test_iaf_without_context_and_step_count():
    flow = IAF(L, 3, [8])
    z_t, log_det = flow(torch.randn(6, L))
    assert z_t.shape == (6, L) and log_det.shape == (6,)
    assert len(flow.steps) == 3
    assert (log_det < 0).all()  # every sigma is below 1


def test_iaf_finite_for_large_inputs():
    torch.manual_seed(5)
    flow = IAF(L, 3, [16], C)
    z = torch.randn(8, L, generator=gen(1)) * 1e4
    z_t, log_det = flow(z, torch.randn(8, C) * 1e3)
    assert torch.isfinite(z_t).all() and torch.isfinite(log_det).all()


def test_iaf_gradients_reach_every_step():
    torch.manual_seed(6)
    flow = IAF(L, 2, [8], C)
    z_t, log_det = flow(torch.randn(4, L), torch.randn(4, C))
    (z_t.pow(2).sum() - log_det.sum()).backward()
    for p in flow.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
