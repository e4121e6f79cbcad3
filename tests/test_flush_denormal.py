"""Subnormal floats flushed to zero on the CPU (``flush_denormal``): applied by training,
harmless to every value above the subnormal range, and resumable from older checkpoints."""

from __future__ import annotations

import pytest
import torch

from iwae.launch.run import train
from iwae.model import IWAEModel
from iwae.objectives import IWAE
from iwae.training.resume import refused_changes
from tests.helpers import compose_config

TINY = ["logger=none", "data.split=[100,20,20]", "schedule.epochs=1", "eval.enabled=false"]


@pytest.mark.parametrize("setting, expected", [("true", True), ("false", False)])
def test_training_sets_the_flush(setting, expected, tmp_path, monkeypatch) -> None:
    calls: list[bool] = []
    real = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: calls.append(on) or real(on))
    try:
        train(compose_config([*TINY, f"flush_denormal={setting}"], tmp_path), tmp_path)
    finally:
        real(False)
    assert calls and calls[0] is expected


def gradients(flush: bool) -> tuple[list[torch.Tensor], int]:
    """IWAE(k=50) gradients of a fresh model, and how many normalised weights are subnormal."""
    torch.set_flush_denormal(flush)
    try:
        torch.manual_seed(0)
        model = IWAEModel(784, latent_dims=(50,), hidden_dims=((200, 200),))
        x = torch.bernoulli(torch.rand(20, 784))
        out = IWAE(50)(model, x)
        out.loss.backward()
        weights = torch.softmax(out.log_w, 0)
        tiny = torch.finfo(weights.dtype).tiny
        subnormal = int(((weights > 0) & (weights < tiny)).sum())
        return [p.grad.clone() for p in model.parameters()], subnormal
    finally:
        torch.set_flush_denormal(False)


def test_the_flush_changes_no_value_above_the_subnormal_range() -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals (not x86 with SSE3)")
    ieee, subnormal = gradients(flush=False)
    flushed, _ = gradients(flush=True)
    assert subnormal > 0, "no subnormal weight: the comparison would test nothing"
    for a, b in zip(ieee, flushed):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-30)


def test_a_checkpoint_from_before_the_keys_resumes_with_their_old_values() -> None:
    stored = {"k": 5, "seed": 0}  # written before steps_per_batch and flush_denormal existed
    old_ways = {"k": 5, "seed": 0, "steps_per_batch": 1, "flush_denormal": False}
    assert refused_changes(stored, old_ways) == []
    refused = refused_changes(stored, {**old_ways, "flush_denormal": True})
    assert refused == ["flush_denormal: False there, True here"]
