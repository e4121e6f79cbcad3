"""Gradient estimators (reparam, STL, DReG): the same bound, the same generative gradient,
DReG unbiased, STL and DReG exactly zero where q is the true posterior."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from iwae.errors import UserError
from iwae.model import IWAEModel
from iwae.objectives import CIWAE, IWAE, MIWAE, PIWAE, VAE, Objective
from tests.helpers import ESTIMATORS, binary_images, grads, small_model


class ExactPosteriorToy(nn.Module):
    """p(h) = N(0, 1), p(x | h) = N(a h + b, s^2); q(h | x) = N(c x + d, exp(l)^2) set to the
    exact posterior, so log w = log p(x) whatever h. IWAEModel's interface, its own densities."""

    def __init__(self, a: float = 1.5, b: float = -0.3, s: float = 0.7) -> None:
        super().__init__()
        t = dict(dtype=torch.float64)
        self.a, self.b = nn.Parameter(torch.tensor(a, **t)), nn.Parameter(torch.tensor(b, **t))
        self.log_s = nn.Parameter(torch.tensor(math.log(s), **t))
        precision = 1 + a**2 / s**2  # posterior: N(a (x - b) / (s^2 precision), 1 / precision)
        self.c = nn.Parameter(torch.tensor(a / (s**2 * precision), **t))
        self.d = nn.Parameter(torch.tensor(-a * b / (s**2 * precision), **t))
        self.log_std = nn.Parameter(torch.tensor(-0.5 * math.log(precision), **t))

    def generative_parameters(self) -> list[nn.Parameter]:
        return [self.a, self.b, self.log_s]

    def inference_parameters(self) -> list[nn.Parameter]:
        return [self.c, self.d, self.log_std]

    def log_weights(self, x: Tensor, k: int, generator=None, detach_q: bool = False) -> Tensor:
        mean, log_std = self.c * x + self.d, self.log_std.expand_as(x)
        h = mean + log_std.exp() * torch.randn((k, *x.shape), generator=generator, dtype=x.dtype)
        if detach_q:
            mean, log_std = mean.detach(), log_std.detach()
        log_q = normal_log_prob(h, mean, log_std)
        log_p = normal_log_prob(h, 0.0, torch.zeros(())) + normal_log_prob(
            x, self.a * h + self.b, self.log_s
        )
        return log_p - log_q


def normal_log_prob(z: Tensor, mean, log_std: Tensor) -> Tensor:
    return -0.5 * ((z - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


def test_exact_posterior_gives_zero_stl_and_dreg_inference_gradients():
    toy, x = ExactPosteriorToy(), torch.tensor([-1.0, 0.2, 2.5], dtype=torch.float64)
    for k in (1, 10):
        bounds, inference = {}, {}
        for est in ESTIMATORS:
            bounds[est], _, inference[est] = grads(IWAE(k, estimator=est), toy, x, seed=3)
        # every weight is p(x) = N(x; b, a^2 + s^2): the bound is log p(x) exactly
        log_px = normal_log_prob(
            x, -0.3, torch.tensor(0.5 * math.log(1.5**2 + 0.7**2), dtype=x.dtype)
        )
        for est in ESTIMATORS:
            torch.testing.assert_close(bounds[est], log_px, rtol=0, atol=1e-12)
        assert inference["stl"].abs().max() < 1e-12
        assert inference["dreg"].abs().max() < 1e-12
        assert inference["reparam"].abs().max() > 1e-3  # the score term: zero mean, not zero


@pytest.mark.parametrize(
    "make",
    [
        lambda e: IWAE(5, estimator=e),
        lambda e: MIWAE(3, m=2, estimator=e),
        lambda e: CIWAE(4, beta=0.3, estimator=e),
        lambda e: PIWAE(3, m=2, estimator=e),
    ],
    ids=["iwae", "miwae", "ciwae", "piwae"],
)
def test_estimators_share_bound_and_generative_gradient(make):
    model, x = small_model(1), binary_images(4)
    results = {est: grads(make(est), model, x, seed=7) for est in ESTIMATORS}
    bound, generative, inference = results["reparam"]
    for est in ("stl", "dreg"):
        torch.testing.assert_close(results[est][0], bound, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(results[est][1], generative, rtol=1e-8, atol=1e-10)
    # and the estimators do differ where they should: on the inference network
    assert (results["stl"][2] - inference).abs().max() > 1e-4
    assert (results["dreg"][2] - results["stl"][2]).abs().max() > 1e-4


def mean_and_stderr(objective: Objective, model, x: Tensor, batches: int, reps: int):
    """Inference gradient averaged over ``batches`` x ``reps`` independent draws per image, and
    the standard error of that average estimated from the ``batches`` averages."""
    xs = x.repeat(reps, 1)  # one call: reps independent draws of every image, averaged
    draws = torch.stack([grads(objective, model, xs, seed=100 + i)[2] for i in range(batches)])
    return draws.mean(0), draws.std(0) / math.sqrt(batches)


def test_dreg_has_the_reparam_expected_inference_gradient_and_stl_does_not():
    model, x, k = small_model(2), binary_images(3, seed=1), 8
    mean = {}
    for est in ESTIMATORS:
        mean[est] = mean_and_stderr(IWAE(k, estimator=est), model, x, batches=20, reps=50)
    (m_rep, se_rep), (m_dreg, se_dreg), (m_stl, se_stl) = mean["reparam"], mean["dreg"], mean["stl"]
    live = se_rep > 0  # weights of a pixel that is 0 in every image get no gradient at all
    z_dreg = ((m_dreg - m_rep).abs() / torch.sqrt(se_rep**2 + se_dreg**2))[live]
    z_stl = ((m_stl - m_rep).abs() / torch.sqrt(se_rep**2 + se_stl**2))[live]
    # 20-odd parameters: a 4.5 sigma band leaves no room for a chance failure (p < 1e-4)
    assert z_dreg.max() < 4.5, z_dreg
    # the test has power: STL is biased for k > 1 (Tucker et al. 2018) and it sees that
    assert z_stl.max() > 6, z_stl
    assert (se_dreg < se_rep).float().mean() > 0.5  # and DReG is the less noisy one


def test_vae_and_iwae_with_one_sample_agree_for_every_estimator():
    model, x = small_model(3), binary_images(5)
    for est in ESTIMATORS:
        b_iwae, g_iwae, i_iwae = grads(IWAE(1, estimator=est), model, x, seed=11)
        b_vae, g_vae, i_vae = grads(VAE(1, estimator=est), model, x, seed=11)
        torch.testing.assert_close(b_iwae, b_vae)
        torch.testing.assert_close(g_iwae, g_vae)
        torch.testing.assert_close(i_iwae, i_vae)


def two_layer_model(seed: int = 0) -> IWAEModel:
    torch.manual_seed(seed)
    model = IWAEModel(6, latent_dims=[3, 2], hidden_dims=[[4], [4]]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def test_two_stochastic_layers_dreg_is_unbiased_and_generative_gradient_unchanged():
    """With a deeper q the sample h1 feeds q(h2 | h1): its path must stay in the STL/DReG
    gradient while q's parameters are detached (IWAEModel.log_weights(detach_q=True))."""
    model, x, k = two_layer_model(4), binary_images(3, seed=2), 6
    bound, generative, _ = grads(IWAE(k), model, x, seed=5)
    for est in ("stl", "dreg"):
        b, g, _ = grads(IWAE(k, estimator=est), model, x, seed=5)
        torch.testing.assert_close(b, bound, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g, generative, rtol=1e-8, atol=1e-10)
    m_rep, se_rep = mean_and_stderr(IWAE(k), model, x, batches=20, reps=50)
    m_dreg, se_dreg = mean_and_stderr(IWAE(k, estimator="dreg"), model, x, batches=20, reps=50)
    live = se_rep > 0
    z = ((m_dreg - m_rep).abs() / torch.sqrt(se_rep**2 + se_dreg**2))[live]
    assert z.max() < 4.5, z


def test_bad_estimator_fails_at_construction():
    with pytest.raises(UserError, match=r"objective.estimator must be one of reparam, stl, dreg"):
        IWAE(5, estimator="DReG")


def test_detached_q_gradient_is_the_path_derivative_with_two_layers():
    """d/dphi log w(h(phi), phi) = path + d/dphi[-log q(h; phi)] at h fixed, so the path part that
    ``detach_q=True`` must return is the total gradient plus the score term of q at fixed h."""
    from iwae.model import gaussian_log_prob

    model, x, k = two_layer_model(6), binary_images(3, seed=3), 4
    phi = model.inference_parameters()
    total_log_w = model.log_weights(x, k, generator=torch.Generator().manual_seed(0))
    total = torch.autograd.grad(total_log_w.sum(), phi)
    path_log_w = model.log_weights(x, k, generator=torch.Generator().manual_seed(0), detach_q=True)
    path = torch.autograd.grad(path_log_w.sum(), phi)
    # the same samples, rebuilt from the same noise, then scored by q with h held fixed
    g = torch.Generator().manual_seed(0)
    m1, s1 = model.encoder[0](x)
    h1 = m1 + s1.exp() * torch.randn((k, *m1.shape), generator=g, dtype=x.dtype)
    m2, s2 = model.encoder[1](h1)
    h2 = m2 + s2.exp() * torch.randn(m2.shape, generator=g, dtype=x.dtype)
    h1, h2 = h1.detach(), h2.detach()
    m2_fixed, s2_fixed = model.encoder[1](h1)
    log_q_fixed = gaussian_log_prob(h1, m1, s1) + gaussian_log_prob(h2, m2_fixed, s2_fixed)
    score = torch.autograd.grad(log_q_fixed.sum(), phi)
    for p_grad, t_grad, s_grad in zip(path, total, score):
        torch.testing.assert_close(p_grad, t_grad + s_grad, rtol=1e-9, atol=1e-9)
