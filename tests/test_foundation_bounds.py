"""The bounds against exact answers: a tiny model whose log p(x) is computed by quadrature."""

from __future__ import annotations

import math

import pytest
import torch

from iwae.bounds import iwae_bound
from iwae.model import IWAEModel
from iwae.objectives import IWAE, VAE


def tiny_model(seed: int = 0) -> IWAEModel:
    """3 pixels, one 1-D latent, no hidden layers: p(x) is a 1-D integral."""
    torch.manual_seed(seed)
    model = IWAEModel(3, latent_dims=[1], hidden_dims=[[]]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def exact_log_px(model: IWAEModel, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log ∫ N(h; 0, 1) p(x | h) dh by the trapezoid rule on [-12, 12]."""
    h = torch.linspace(-12, 12, 40001, dtype=torch.float64)
    logits = model.decoder[0](h[:, None])  # [H, 3]
    log_lik = (x[:, None, :] * logits - torch.nn.functional.softplus(logits)).sum(-1)  # [B, H]
    log_joint = log_lik - 0.5 * h**2 - 0.5 * math.log(2 * math.pi)
    dh = h[1] - h[0]
    return torch.logsumexp(log_joint, dim=1) + torch.log(dh)


ALL_X = torch.tensor(
    [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float64
)


def test_quadrature_is_a_distribution():
    """The reference itself: p(x) over all 8 binary images sums to one."""
    total = exact_log_px(tiny_model(), ALL_X).exp().sum()
    assert abs(float(total) - 1.0) < 1e-8


@torch.no_grad()
def test_bound_below_log_px_and_converges():
    model = tiny_model()
    log_px = exact_log_px(model, ALL_X)
    g = torch.Generator().manual_seed(0)
    reps = 400
    x = ALL_X.repeat(reps, 1)  # many independent estimates of each image's bound
    gaps = []
    for k in (1, 10, 100, 1000):
        bound = iwae_bound(model.log_weights(x, k, generator=g)).view(reps, 8)
        mean, se = bound.mean(0), bound.std(0) / math.sqrt(reps)
        assert (mean <= log_px + 3 * se + 1e-9).all(), f"k={k}: estimate above log p(x)"
        gaps.append(float((log_px - mean).mean()))
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] >= -1e-3
    assert gaps[-1] < 0.01  # within 0.01 nats of the exact log-likelihood at k = 1000


@torch.no_grad()
def test_expected_bound_does_not_decrease_with_k():
    model = tiny_model(1)
    g = torch.Generator().manual_seed(1)
    x = ALL_X.repeat(2000, 1)
    means = []
    for k in (1, 2, 5, 20):
        bound = iwae_bound(model.log_weights(x, k, generator=g))
        means.append((float(bound.mean()), float(bound.std()) / math.sqrt(len(bound))))
    for (m_small, se_small), (m_big, se_big) in zip(means, means[1:]):
        assert m_big >= m_small - 3 * math.hypot(se_small, se_big)
    assert means[-1][0] > means[0][0]  # and it strictly improves overall


def test_iwae_with_one_sample_equals_vae():
    model = tiny_model(2)
    torch.manual_seed(5)
    iwae = IWAE(k=1)(model, ALL_X)
    torch.manual_seed(5)
    vae = VAE(k=1)(model, ALL_X)
    torch.testing.assert_close(iwae.bound, vae.bound)
    torch.testing.assert_close(iwae.loss, vae.loss)


def test_vae_bound_is_mean_of_log_weights():
    model = tiny_model(3)
    torch.manual_seed(0)
    out = VAE(k=7)(model, ALL_X)
    torch.manual_seed(0)
    torch.testing.assert_close(out.bound, model.log_weights(ALL_X, 7).mean(0).detach())


def test_surrogate_gradient_equals_autograd_through_log_mean_exp():
    model = tiny_model(4)
    log_w = model.log_weights(ALL_X, 50, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    direct = torch.autograd.grad(iwae_bound(log_w).sum(), params, retain_graph=True)
    surrogate = IWAE(k=50).surrogate(log_w, log_w.detach()).sum()
    via_surrogate = torch.autograd.grad(surrogate, params)
    for a, b in zip(direct, via_surrogate):
        torch.testing.assert_close(a, b)
    assert any(float(g.abs().sum()) > 0 for g in direct)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_is_refused_at_construction(k):
    from iwae.errors import UserError

    with pytest.raises(UserError, match="k must be an integer >= 1"):
        IWAE(k=k)
