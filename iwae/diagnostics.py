"""Why DReG helps at large k: effective sample size and gradient signal-to-noise ratio.

- ESS of the normalised importance weights, 1 / sum_i w~_i^2 (Kong 1992): near k when q is a
  good proposal, near 1 when one sample carries all the weight.
- Gradient SNR (Rainforth et al. 2018): for each parameter, |E[g]| / std(g) over
  repeated gradient draws on one fixed minibatch, then averaged over the parameters of the
  inference network (phi) and of the generative network (theta). For the IWAE's standard
  gradient the inference network's SNR falls like 1/sqrt(k); DReG's does not.

`iwae.training.diagnostics.GradientDiagnostics` logs both during training
(``callbacks=diagnostics``);
``python -m iwae.reports.snr`` prints the estimator comparison of docs/objectives.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from iwae.errors import check_positive_int
from iwae.objectives import Objective


def _flat_grads(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).flatten()
            for p, g in zip(params, grads, strict=True)
        ]
    )


def gradient_snr(objective: Objective, model, x: Tensor, draws: int) -> dict[str, float]:
    """Rainforth et al.'s gradient SNR of each network on the minibatch ``x`` (``[B, D]``).

    ``draws`` independent gradients of ``objective``'s loss (fresh samples h each time); per
    parameter |mean| / std (std with Bessel's correction), averaged over the parameters whose
    gradient is not identically zero. With n draws a parameter whose true mean is 0 still reads
    about sqrt(2 / (pi n)): that is the floor of the estimate.

    Returns:
        ``{"inference": SNR of phi, "generative": SNR of theta}``.
    """
    check_positive_int("draws", draws, minimum=2)
    groups = {
        "inference": model.inference_parameters(),
        "generative": model.generative_parameters(),
    }
    params = [p for ps in groups.values() for p in ps]
    sizes = [sum(p.numel() for p in ps) for ps in groups.values()]
    total = sq = None
    for _ in range(draws):
        g = _flat_grads(objective(model, x).loss, params).double()
        total = g if total is None else total + g
        sq = g.square() if sq is None else sq + g.square()
    mean = total / draws
    std = ((sq - draws * mean.square()).clamp_min(0) / (draws - 1)).sqrt()
    out = {}
    for name, m, s in zip(groups, mean.split(sizes), std.split(sizes), strict=True):
        live = s > 0
        out[name] = float((m[live].abs() / s[live]).mean()) if live.any() else math.nan
    return out


def fork_rng(device: torch.device):
    """Diagnostics draw their own noise: the training run's random stream is left untouched,
    so a run with diagnostics trains exactly as one without."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
