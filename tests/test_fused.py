"""Fusion is exact: a fused member computes what the same configuration computes alone.

On the same noise, each member's log weights, loss, gradients and first Adam updates equal
those of an `IWAEModel` trained by the project's objective and ``torch.optim.Adam``: bit for bit
for a group of VAE and IWAE members at one k on one CPU thread (the CPU's grouping), to float
tolerance otherwise: float32 rounding of batched against separate matmuls (log weights, losses,
gradients to 1e-5 relative); parameters after each Adam step to 1e-5 absolute at lr 1e-2, 0.1%
of a step (Adam divides by sqrt(v) + eps, which magnifies the rounding of gradients near zero).
"""

from __future__ import annotations

import pytest
import torch

from iwae.errors import UserError
from iwae.fused.adam import StackedAdam
from iwae.fused.objectives import FusedObjective, mixing_weight
from iwae.fused.stacked import StackedIWAE
from iwae.model import IWAEModel
from iwae.objectives import CIWAE, IWAE, MIWAE, VAE

D = 12
ARCHS = {"one_layer": ([4], [[8, 8]]), "two_layer": ([6, 3], [[8, 8], [5, 5]])}
ADAM = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-4}


def _members(arch: str, objectives, seed: int = 0):
    latent, hidden = ARCHS[arch]
    models = []
    for m in range(len(objectives)):
        torch.manual_seed(seed + m)
        models.append(IWAEModel(D, latent, hidden))
    return models


def _noise(models, objectives, x: torch.Tensor, gens):
    """Each member's noise as ``IWAEModel.log_weights(x, k, generator)`` draws it (layer by
    layer from one generator), padded with zeros to the group's largest k."""
    k_max = max(o.k for o in objectives)
    draws = [[] for _ in models[0].latent_dims]
    for obj, g in zip(objectives, gens):
        for layer, d in enumerate(models[0].latent_dims):
            eps = torch.randn(obj.k, x.shape[1], d, generator=g)
            draws[layer].append(torch.cat([eps, eps.new_zeros(k_max - obj.k, *eps.shape[1:])]))
    return [torch.stack(per_member) for per_member in draws]


def _generators(n: int, seed: int):
    return [torch.Generator().manual_seed(seed + m) for m in range(n)]


@pytest.mark.parametrize("arch", ["one_layer", "two_layer"])
def test_fused_member_equals_the_configuration_alone(arch: str) -> None:
    objectives = [VAE(k=1), IWAE(k=5), VAE(k=5), IWAE(k=12), CIWAE(k=3, beta=0.3)]
    models = _members(arch, objectives)
    stacked = StackedIWAE(models)
    torch.manual_seed(3)
    x = torch.bernoulli(torch.rand(len(models), 4, D))
    fused = FusedObjective(objectives, "cpu")
    adam = StackedAdam(stacked, **ADAM)
    refs = [
        torch.optim.Adam(m.parameters(), lr=ADAM["lr"], betas=(0.9, 0.999), eps=ADAM["eps"])
        for m in models
    ]
    for step in range(3):
        gens = _generators(len(models), seed=100 * step)
        noise = _noise(models, objectives, x, gens)
        log_w = stacked.log_weights(x, noise)
        out = fused(log_w)
        out.loss.sum().backward()
        grads = dict(zip(stacked.names, stacked.grads()))
        adam.step(list(grads.values()), torch.ones(len(models), dtype=torch.bool))
        gens = _generators(len(models), seed=100 * step)
        for m, (model, obj, opt) in enumerate(zip(models, objectives, refs)):
            ref_w = model.log_weights(x[m], obj.k, generator=gens[m])
            k = obj.k
            torch.testing.assert_close(log_w[m, :k].detach(), ref_w.detach(), rtol=1e-5, atol=1e-4)
            ref = obj(_FixedNoise(model, ref_w), x[m])
            torch.testing.assert_close(
                out.loss[m].detach(), ref.loss.detach(), rtol=1e-5, atol=1e-4
            )
            torch.testing.assert_close(out.bound[m], ref.bound, rtol=1e-5, atol=1e-4)
            opt.zero_grad()
            ref.loss.backward()
            for name, p in model.named_parameters():
                torch.testing.assert_close(
                    stacked.model_layout(name, grads[name][m]),
                    p.grad,
                    rtol=1e-4,
                    atol=1e-5,
                    msg=f"{name} step {step}",
                )
            opt.step()
            for name, p in model.named_parameters():
                torch.testing.assert_close(
                    stacked.member_state_dict(m)[name], p.detach(), rtol=0, atol=1e-5
                )


class _FixedNoise:
    """A model whose log_weights returns fixed log weights: the objective sees the same ones."""

    def __init__(self, model: IWAEModel, log_w: torch.Tensor) -> None:
        self.model, self.log_w = model, log_w

    def log_weights(self, x, k, detach_q=False):
        return self.log_w


def test_a_masked_member_keeps_everything(arch: str = "one_layer") -> None:
    """update[m] false: that member's parameters, moments and step count stay bit for bit,
    even with a NaN gradient; the others move."""
    models = _members(arch, [VAE(k=1)] * 3)
    stacked = StackedIWAE(models)
    adam = StackedAdam(stacked, **ADAM)
    grads = [torch.randn_like(p) for p in stacked.params.values()]
    adam.step(grads, torch.ones(3, dtype=torch.bool))
    before = [t.clone() for t in (stacked.flat, adam.exp_avg, adam.exp_avg_sq, adam.steps)]
    grads = [torch.randn_like(p) for p in stacked.params.values()]
    grads[0][1, 0, 0] = float("nan")
    adam.step(grads, torch.tensor([True, False, True]))
    after = (stacked.flat, adam.exp_avg, adam.exp_avg_sq, adam.steps)
    for old, new in zip(before, after):
        assert torch.equal(old[1], new[1])
        assert not torch.equal(old[0], new[0]) and not torch.equal(old[2], new[2])


def test_unsupported_objectives_are_refused_with_one_line() -> None:
    for objective in (MIWAE(k=5, m=2), IWAE(k=5, estimator="dreg")):
        with pytest.raises(UserError, match="hydra/launcher=fused trains") as err:
            mixing_weight(objective)
        assert "\n" not in str(err.value)


# The paper's one-layer network at its full size: matrix kernels pick their blocking by size, so
# a small stand-in could agree where the real one does not.
PAPER_D, PAPER_ONE_LAYER = 784, ([50], [[200, 200]])


def _same(fused: torch.Tensor, separate: torch.Tensor, exact: bool, what: object) -> None:
    if exact:
        assert torch.equal(fused, separate), what
    else:  # float32 rounding: the first step's values agree to 1e-5 relative
        torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-5, msg=str(what))


@pytest.mark.parametrize("k", [1, 5, 50])
@pytest.mark.parametrize("threads", [1, 2], ids=["one thread: bit for bit", "two: rounding"])
def test_a_vae_and_iwae_group_equals_its_separate_runs(k: int, threads: int) -> None:
    """A group of VAE and IWAE members at one k (the CPU's grouping: split by k, no padding):
    log weights, loss, bound, every gradient and the parameters after three Adam steps equal a
    separate run's bit for bit on one torch thread (the single run's Adam is torch's fused
    kernel too). On several threads a member's matrix product inside the batched one is split
    across threads otherwise than a separate run's, so the values agree to rounding only. At
    k = 50 the Bernoulli term's x . l, once batched over members, rounded otherwise on any
    number of threads, and training amplified that into a different end point."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _three_steps(k, exact=threads == 1)
    finally:
        torch.set_num_threads(before)


def _three_steps(k: int, exact: bool) -> None:
    objectives = [VAE(k=k), IWAE(k=k)]
    models = []
    for m in range(len(objectives)):
        torch.manual_seed(m)
        models.append(IWAEModel(PAPER_D, *PAPER_ONE_LAYER))
    stacked = StackedIWAE(models)
    fused, adam = FusedObjective(objectives, "cpu"), StackedAdam(stacked, **ADAM)
    refs = [
        torch.optim.Adam(m.parameters(), lr=ADAM["lr"], betas=(0.9, 0.999), eps=ADAM["eps"],
                         fused=True)
        for m in models
    ]  # fmt: skip
    torch.manual_seed(3)
    x = torch.bernoulli(torch.rand(len(models), 20, PAPER_D))
    steps = 3 if exact else 1  # rounding apart, Adam's division by sqrt(v) magnifies it
    for step in range(steps):
        log_w = stacked.log_weights(x, _noise(models, objectives, x, _generators(2, 100 * step)))
        out = fused(log_w)
        out.loss.sum().backward()
        grads = dict(zip(stacked.names, stacked.grads()))
        adam.step(list(grads.values()), torch.ones(len(models), dtype=torch.bool))
        gens = _generators(len(models), seed=100 * step)
        for m, (model, obj, opt) in enumerate(zip(models, objectives, refs)):
            ref_w = model.log_weights(x[m], k, generator=gens[m])
            _same(log_w[m].detach(), ref_w.detach(), exact, (obj, step))
            ref = obj(_FixedNoise(model, ref_w), x[m])
            _same(out.loss[m].detach(), ref.loss.detach(), exact, (obj, step))
            _same(out.bound[m], ref.bound, exact, (obj, step))
            opt.zero_grad()
            ref.loss.backward()
            for name, p in model.named_parameters():
                layout = stacked.model_layout(name, grads[name][m])
                _same(layout, p.grad, exact, (name, obj, step))
            opt.step()
            if exact:
                state = stacked.member_state_dict(m)
                for name, p in model.named_parameters():
                    assert torch.equal(state[name], p.detach()), (name, obj, step)
