"""Gradient SNR against a known answer; diagnostics leave the training noise alone.

The estimators' SNR against k is measured, not tested: ``python -m iwae.reports.snr``
(docs/objectives.md). On a tiny model k = 64 is not yet in the regime where reparam's SNR falls.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from iwae.diagnostics import gradient_snr
from iwae.objectives import IWAE
from iwae.training.diagnostics import GradientDiagnostics
from tests.helpers import binary_images, small_model


class KnownGradients(nn.Module):
    """d loss / d phi ~ N(mu, 1) and d loss / d theta ~ N(0, 4): SNR mu and 0."""

    def __init__(self) -> None:
        super().__init__()
        self.phi = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def inference_parameters(self):
        return [self.phi]

    def generative_parameters(self):
        return [self.theta]


def test_snr_matches_a_known_distribution():
    torch.manual_seed(0)
    model, mu = KnownGradients(), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def objective(model, x):
        noise = torch.randn(5, dtype=torch.float64)
        loss = (model.phi * (mu + noise[:3])).sum() + (model.theta * 2 * noise[3:]).sum()
        return SimpleNamespace(loss=loss)

    snr = gradient_snr(objective, model, torch.zeros(1), draws=4000)
    assert abs(snr["inference"] - float(mu.mean())) < 0.08
    assert snr["generative"] < 3 * math.sqrt(2 / (math.pi * 4000))  # the floor of |mean| / std


def test_diagnostics_leave_the_training_noise_alone():
    model, x = small_model(2), binary_images(4)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    metrics = GradientDiagnostics(every_n_steps=1, draws=3).measure(IWAE(8), model, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert 1 <= metrics["diag/ess"] <= 8 and 0 < metrics["diag/ess_fraction"] <= 1
    assert metrics["diag/snr_inference"] > 0 and metrics["diag/snr_generative"] > 0
