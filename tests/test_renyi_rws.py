"""The Renyi (VR) bound and reweighted wake-sleep: their special cases, Pyro's RenyiELBO, the
wake-phase gradient against a formula written out from the model's layers, and both
objectives through train.py (checkpoint, mode=eval, the fused launcher's refusal)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor

from iwae.bounds import elbo, iwae_bound, renyi_bound
from iwae.errors import UserError
from iwae.model import (
    IWAEModel,
    bernoulli_log_prob,
    gaussian_log_prob,
    standard_normal_log_prob,
)
from iwae.objectives import IWAE, RWS, VAE, Renyi
from tests import helpers
from tests.helpers import TINY, binary_images, compose_config, grads, run_train, small_model


def assert_same(a, b, rtol: float = 1e-9, atol: float = 1e-11) -> None:
    for t, u in zip(a, b, strict=True):
        torch.testing.assert_close(t, u, rtol=rtol, atol=atol)


def two_layer_model(seed: int = 0) -> IWAEModel:
    torch.manual_seed(seed)
    model = IWAEModel(6, latent_dims=[3, 2], hidden_dims=[[4], [4]]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def noise(model: IWAEModel, k: int, batch: int, seed: int) -> list[Tensor]:
    """The Gaussian noise ``model.log_weights`` draws after ``torch.manual_seed(seed)``: one
    ``[k, B, d_l]`` tensor per stochastic layer, in the order it draws them."""
    torch.manual_seed(seed)
    return [torch.randn(k, batch, d, dtype=torch.float64) for d in model.latent_dims]


def log_p(model: IWAEModel, x: Tensor, hs: list[Tensor]) -> Tensor:
    """log p(x, h_1..h_L), ``[k, B]``, from the decoder's layers."""
    out = standard_normal_log_prob(hs[-1])
    for i in range(len(hs) - 1, 0, -1):
        out = out + gaussian_log_prob(hs[i - 1], *model.decoder[i](hs[i]))
    return out + bernoulli_log_prob(x, model.decoder[0](hs[0]))


def log_w_by_hand(model: IWAEModel, x: Tensor, eps: list[Tensor], detach_q: bool = False):
    """Reparameterised log w at the noise ``eps`` (``[k, B]``), from the model's layers."""
    h, hs, log_q = x, [], 0.0
    for layer, e in zip(model.encoder, eps):
        mean, log_std = layer(h)
        h_new = mean + log_std.exp() * e
        if detach_q:  # STL: q's parameters constant, its input live
            frozen = {n: p.detach() for n, p in layer.named_parameters()}
            mean, log_std = torch.func.functional_call(layer, frozen, (h,))
        log_q = log_q + gaussian_log_prob(h_new, mean, log_std)
        h = h_new
        hs.append(h)
    return log_p(model, x, hs) - log_q


def wake_by_hand(model: IWAEModel, x: Tensor, eps: list[Tensor]) -> Tensor:
    """sum_i w~_i log q(h_i | x), averaged over the batch: the samples and the normalised
    weights computed first and held fixed, log q's parameters live."""
    with torch.no_grad():
        h, hs = x, []
        for layer, e in zip(model.encoder, eps):
            mean, log_std = layer(h)
            h = mean + log_std.exp() * e
            hs.append(h)
    log_q = sum(
        gaussian_log_prob(h, *layer(h_in))
        for layer, h_in, h in zip(model.encoder, [x, *hs[:-1]], hs)
    )
    w = torch.softmax(log_p(model, x, hs) - log_q, dim=0).detach()
    return (w * log_q).sum(0).mean()


# --- Renyi -----------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["reparam", "stl"])
def test_renyi_alpha_zero_is_iwae(estimator):
    model, x = small_model(1), binary_images(4)
    assert_same(
        grads(Renyi(5, alpha=0, estimator=estimator), model, x, 3),
        grads(IWAE(5, estimator=estimator), model, x, 3),
    )


@pytest.mark.parametrize("estimator", ["reparam", "stl"])
def test_renyi_alpha_one_is_the_elbo_and_the_limit_approaches_it(estimator):
    model, x = small_model(2), binary_images(4)
    vae = grads(VAE(5, estimator=estimator), model, x, 4)
    assert_same(grads(Renyi(5, alpha=1, estimator=estimator), model, x, 4), vae)
    near = grads(Renyi(5, alpha=1 - 1e-7, estimator=estimator), model, x, 4)
    assert_same(near, vae, rtol=1e-5, atol=1e-6)
    log_w = 3 * torch.randn(7, 4, dtype=torch.float64)
    torch.testing.assert_close(renyi_bound(log_w, 1.0), elbo(log_w), rtol=0, atol=0)
    for t in (1e-3, 1e-5, 1e-7):
        gap = (renyi_bound(log_w, 1 - t) - elbo(log_w)).abs().max()
        assert 0 < gap < 100 * t  # the VR bound is smooth in alpha: the gap is O(1 - alpha)


def test_renyi_logs_a_lower_bound_for_every_alpha():
    model, x = small_model(3), binary_images(4)
    for alpha in (0.5, 2.0):  # the bound trained, below L_k
        torch.manual_seed(5)
        out = Renyi(6, alpha=alpha)(model, x)
        torch.testing.assert_close(out.bound, renyi_bound(out.log_w, alpha))
        assert (out.bound < iwae_bound(out.log_w)).all()
    torch.manual_seed(5)
    out = Renyi(6, alpha=-1.0)(model, x)
    # alpha < 0: the VR value is above L_k (no lower bound), so L_k is logged
    assert (renyi_bound(out.log_w, -1.0) > iwae_bound(out.log_w)).all()
    torch.testing.assert_close(out.bound, iwae_bound(out.log_w))


@pytest.mark.parametrize("bad", ["x", float("nan"), float("inf"), True, None])
def test_renyi_refuses_a_bad_alpha(bad):
    with pytest.raises(UserError, match="objective.alpha"):
        Renyi(5, alpha=bad)


def test_renyi_refuses_dreg():
    with pytest.raises(UserError, match="reparam or stl"):
        Renyi(5, alpha=0.5, estimator="dreg")


class FixedNoise:
    """A one-layer `IWAEModel` whose log weights use the given noise ``eps`` (``[k, B, d]``)
    instead of drawing it: the samples Pyro drew, reparameterised by this model's layers."""

    def __init__(self, model: IWAEModel, eps: Tensor) -> None:
        self.model, self.eps = model, eps

    def log_weights(self, x: Tensor, k: int, detach_q: bool = False) -> Tensor:
        assert k == self.eps.shape[0]
        return log_w_by_hand(self.model, x, [self.eps], detach_q)

    def generative_parameters(self):
        return self.model.generative_parameters()

    def inference_parameters(self):
        return self.model.inference_parameters()


def test_log_weights_by_hand_are_the_models():
    for model in (small_model(4), two_layer_model(4)):
        x = binary_images(3)
        torch.manual_seed(9)
        expected = model.log_weights(x, 4)
        torch.testing.assert_close(log_w_by_hand(model, x, noise(model, 4, 3, 9)), expected)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0, 2.0])
def test_renyi_matches_pyro_renyi_elbo(alpha):
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from pyro.infer import RenyiELBO

    model, x = small_model(5), binary_images(4)
    k, batch = 6, x.shape[0]
    drawn: list[Tensor] = []

    def generative(x: Tensor) -> None:
        pyro.module("decoder", model.decoder)
        with pyro.plate("data", batch):
            prior = dist.Normal(x.new_zeros(2), x.new_ones(2)).to_event(1)
            h = pyro.sample("h", prior)
            pyro.sample("x", dist.Bernoulli(logits=model.decoder[0](h)).to_event(1), obs=x)

    def guide(x: Tensor) -> None:
        pyro.module("encoder", model.encoder)
        with pyro.plate("data", batch):
            mean, log_std = model.encoder[0](x)
            drawn.append(pyro.sample("h", dist.Normal(mean, log_std.exp()).to_event(1)))

    pyro.clear_param_store()
    torch.manual_seed(0)
    model.zero_grad()
    elbo = RenyiELBO(alpha, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    pyro_loss = elbo.loss_and_grads(generative, guide, x)  # summed over the batch
    pyro_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    (h,) = drawn
    mean, log_std = model.encoder[0](x)
    eps = ((h - mean) / log_std.exp()).detach()
    out = Renyi(k, alpha=alpha)(FixedNoise(model, eps), x)
    assert math.isclose(-renyi_bound(out.log_w, alpha).sum().item(), pyro_loss, rel_tol=1e-10)
    ours = torch.autograd.grad(out.loss * batch, list(model.parameters()))
    assert_same(ours, pyro_grads)


# --- RWS -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [small_model, two_layer_model])
def test_rws_inference_gradient_is_the_wake_phase_score(make):
    model, x = make(6), binary_images(5)
    bound, g_theta, g_phi = grads(RWS(4), model, x, 11)
    wake = wake_by_hand(model, x, noise(model, 4, 5, 11))
    expected = torch.autograd.grad(-wake, model.inference_parameters())
    assert_same([g_phi], [torch.cat([g.flatten() for g in expected])], rtol=1e-8, atol=1e-10)
    # the generative network and the logged bound are the IWAE's, on the same samples
    iwae_bound_, iwae_theta, iwae_phi = grads(IWAE(4), model, x, 11)
    assert_same([bound, g_theta], [iwae_bound_, iwae_theta])
    assert not torch.allclose(g_phi, iwae_phi)


def test_rws_draws_each_step_once_from_the_training_stream():
    model, x = small_model(7), binary_images(3)
    torch.manual_seed(2)
    RWS(4)(model, x)
    after_rws = torch.randn(3)
    torch.manual_seed(2)
    IWAE(4)(model, x)
    torch.testing.assert_close(after_rws, torch.randn(3))


# --- the configs and train.py ----------------------------------------------------------------
def test_configs_build_the_objectives(tmp_path):
    cfg = compose_config(["objective=renyi", "objective.alpha=0", "k=7"], tmp_path)
    renyi = instantiate(cfg.objective)
    assert isinstance(renyi, Renyi) and renyi.alpha == 0 and renyi.k == 7
    rws = instantiate(compose_config(["objective=rws", "k=3"], tmp_path).objective)
    assert isinstance(rws, RWS) and rws.k == 3


OVERRIDES = [["objective=rws"], ["objective=renyi", "objective.alpha=-1"]]


@pytest.mark.parametrize("objective", OVERRIDES)
def test_trains_and_its_checkpoint_is_evaluated(objective, tmp_path):
    run = tmp_path / "run"
    run_train([*objective, "k=3", *TINY, "logger=none"], tmp_path, run_dir=run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nll"]) and metrics["objective"] == objective[0][10:]
    ckpt = run / "checkpoints" / "last.ckpt"
    run_train(  # the stored config's objective passes the allow-list and is rebuilt
        ["mode=eval", f"ckpt_path={ckpt}", "eval.k=10", "logger=none"],
        tmp_path,
        run_dir=tmp_path / "eval",
    )
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert math.isfinite(evaluated["test/nll"]) and evaluated["objective"] == metrics["objective"]


@pytest.mark.parametrize("objective", ["rws", "renyi"])
def test_fused_launcher_refuses_in_one_line(objective, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(helpers.TRAIN), "-m", "hydra/launcher=fused", f"objective={objective}",
         "k=1,5", *TINY, "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=helpers.train_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert ("RWS" if objective == "rws" else "Renyi") in lines[0]
    assert not list((tmp_path / "sweep").rglob("metrics.json"))
    assert not list((tmp_path / "sweep").rglob("*.ckpt"))
