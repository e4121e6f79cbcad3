"""The training fast path computes what the plain PyTorch reference computes.

The reference (`benchmarks.reference`) is the textbook version: ``torch.distributions``, separate
mean and log-std layers, ``torch.optim.Adam`` as it comes. Same weights and same noise must give
the same log weights, bound and gradients (float64, to rounding), and a few steps of the real
Lightning training path must move the weights as the reference loop does. No timings here:
speed lives in ``benchmarks/``.
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from benchmarks.reference import ReferenceIWAE, iwae_loss
from datamodules.base import MinibatchIterable
from iwae.model import IWAEModel
from iwae.objectives import IWAE, VAE
from iwae.training.optim import build_optimizer

ARCHITECTURES = {
    "one_layer": ([50], [[200, 200]]),
    "two_layer": ([100, 50], [[200, 200], [100, 100]]),
}


def pair(arch: str, dtype: torch.dtype = torch.float64) -> tuple[IWAEModel, ReferenceIWAE]:
    torch.manual_seed(0)
    latent, hidden = ARCHITECTURES[arch]
    model = IWAEModel(784, latent, hidden)
    # A non-trivial output bias, as training starts from (the logit of the mean pixel).
    model.init_output_bias(torch.rand(784) * 0.5)
    model = model.to(dtype)
    return model, ReferenceIWAE(784, latent, hidden).to(dtype).load_from(model)


def binary_batch(n: int = 7, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.rand(n, 784, generator=g, dtype=dtype), generator=g)


def reference_grads(ref: ReferenceIWAE) -> list[torch.Tensor]:
    """The reference's gradients in `IWAEModel.parameters()` order (fused heads joined)."""
    grads = []
    for theirs in [*ref.encoder, *ref.decoder]:
        grads += [p.grad for p in theirs.net.parameters()]
        if hasattr(theirs, "mean"):
            grads.append(torch.cat([theirs.mean.weight.grad, theirs.log_std.weight.grad]))
            grads.append(torch.cat([theirs.mean.bias.grad, theirs.log_std.bias.grad]))
        else:
            grads += [theirs.logits.weight.grad, theirs.logits.bias.grad]
    return grads


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("k", [1, 5, 50])
def test_log_weights_match_torch_distributions(arch: str, k: int) -> None:
    model, ref = pair(arch)
    x = binary_batch()
    fast = model.log_weights(x, k, generator=torch.Generator().manual_seed(3))
    slow = ref.log_weights(x, k, generator=torch.Generator().manual_seed(3))
    assert fast.shape == (k, x.shape[0])
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("k", [1, 5, 50])
def test_iwae_bound_and_gradients_match_reference(arch: str, k: int) -> None:
    model, ref = pair(arch)
    x = binary_batch()
    torch.manual_seed(4)  # the objective draws its noise from the global generator
    out = IWAE(k)(model, x)
    out.loss.backward()
    log_w = ref.log_weights(x, k, generator=torch.Generator().manual_seed(4))
    loss = iwae_loss(log_w)
    loss.backward()
    bound = (torch.logsumexp(log_w, 0) - math.log(k)).detach()
    torch.testing.assert_close(out.bound, bound, rtol=1e-10, atol=1e-9)
    # out.loss is a surrogate (sum_i w~_i log w_i): only its gradient is the bound's
    for fast, slow in zip([p.grad for p in model.parameters()], reference_grads(ref)):
        torch.testing.assert_close(fast, slow, rtol=1e-8, atol=1e-10)


def test_vae_objective_gradients_match_reference() -> None:
    model, ref = pair("one_layer")
    x = binary_batch()
    torch.manual_seed(5)
    VAE(5)(model, x).loss.backward()
    log_w = ref.log_weights(x, 5, generator=torch.Generator().manual_seed(5))
    (-log_w.mean(0).mean()).backward()
    for fast, slow in zip([p.grad for p in model.parameters()], reference_grads(ref)):
        torch.testing.assert_close(fast, slow, rtol=1e-8, atol=1e-10)


def test_fused_adam_takes_the_plain_adam_step() -> None:
    # float64: Adam divides by sqrt(v), which turns float32 rounding of a near-zero gradient
    # into a visible difference; in float64 only the kernels' own rounding is left.
    model, _ = pair("one_layer")
    plain = IWAEModel(784).double()
    plain.load_state_dict(model.state_dict())
    factory = _adam_partial()
    fast_opt = build_optimizer(factory, model.parameters())
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4)
    assert fast_opt.param_groups[0]["fused"] is True
    x = binary_batch()
    for step in range(3):
        for net, opt in ((model, fast_opt), (plain, plain_opt)):
            torch.manual_seed(step)
            opt.zero_grad()
            IWAE(5)(net, x).loss.backward()
            opt.step()
    for a, b in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_build_optimizer_respects_an_explicit_choice() -> None:
    import functools

    params = list(IWAEModel(784).parameters())
    opt = build_optimizer(functools.partial(torch.optim.Adam, lr=1e-3, foreach=False), params)
    assert not opt.param_groups[0]["fused"] and opt.param_groups[0]["foreach"] is False
    sgd = build_optimizer(functools.partial(torch.optim.SGD, lr=0.1), params)
    sgd.step()  # whatever kernel it got, it steps


def _adam_partial():
    import functools

    return functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.9, 0.999), eps=1e-4)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_lightning_training_path_moves_weights_like_the_reference_loop(arch, tmp_path) -> None:
    """A few steps of `IWAEModule` in a real Trainer (data by index, dynamic binarization,
    fused Adam) against the reference loop fed the same minibatches and the same noise."""
    from iwae.schedules import ConstantSchedule
    from iwae.training.module import IWAEModule

    model, _ = pair(arch)  # float64, as in test_fused_adam_takes_the_plain_adam_step
    ref = ReferenceIWAE(784, *ARCHITECTURES[arch]).double().load_from(model)
    data = torch.rand(100, 784, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    steps, k = 4, 5

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return MinibatchIterable(data, 20, True, True, seed=7)

    module = IWAEModule(model, IWAE(k), _adam_partial(), ConstantSchedule(1), log_every_n_steps=2)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    torch.manual_seed(11)
    trainer.fit(module, datamodule=Data())
    assert trainer.global_step == steps

    noise = torch.Generator().manual_seed(11)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4)
    for x in list(MinibatchIterable(data, 20, True, True, seed=7))[:steps]:
        opt.zero_grad()
        iwae_loss(ref.log_weights(x, k, generator=noise)).backward()
        opt.step()
    trained = ReferenceIWAE(784, *ARCHITECTURES[arch]).double().load_from(module.model)
    for a, b in zip(trained.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("k", [1, 50])
def test_evaluation_path_without_autograd_gives_the_same_log_weights(arch: str, k: int) -> None:
    """Without autograd `log_weights` overwrites its logits in place: same values."""
    model, ref = pair(arch)
    x = binary_batch()
    with torch.no_grad():
        fast = model.log_weights(x, k, generator=torch.Generator().manual_seed(6))
        slow = ref.log_weights(x, k, generator=torch.Generator().manual_seed(6))
    with_grad = model.log_weights(x, k, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(fast, with_grad.detach(), rtol=1e-12, atol=1e-12)
