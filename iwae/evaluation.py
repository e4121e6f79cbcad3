"""Importance-sampled log-likelihood and active units, the paper's two test measures."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from iwae.errors import check_positive_int


@torch.no_grad()
def log_likelihood(
    model,
    x: Tensor,
    k: int,
    chunk_size: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The k-sample bound log (1/k) sum_i w_i per image, streamed over chunks of samples.

    A running log-sum-exp over chunks of at most ``chunk_size`` samples keeps memory at
    O(chunk_size * B) whatever k; it is accumulated in float64 so that k = 5000 adds no
    rounding error of its own.

    Args:
        x: binary images ``[B, D]``.
    Returns:
        ``[B]`` float64, lower bounds on log p(x) in nats.
    """
    check_positive_int("eval.k", k)
    check_positive_int("eval.chunk_size", chunk_size)
    total = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    done = 0
    while done < k:
        n = min(chunk_size, k - done)
        log_w = model.log_weights(x, n, generator=generator).double()
        total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
        done += n
    return total - math.log(k)


@torch.no_grad()
def active_units(
    model, batches: Iterable[Tensor], threshold: float = 0.01, n_samples: int = 100, seed: int = 0
) -> tuple[list[int], list[Tensor]]:
    """Units u whose Cov_x(E_q[u | x]) exceeds ``threshold`` (Burda et al. 2015, sec. 5.2).

    Returns:
        (active count per stochastic layer, variance of each unit's encoder mean per layer).
    """
    generator = None
    sums: list[Tensor] = []
    squares: list[Tensor] = []
    count = 0
    for x in batches:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(seed)
        means = [m.double() for m in model.encoder_means(x, n_samples, generator)]
        if not sums:
            sums = [torch.zeros_like(m[0]) for m in means]
            squares = [torch.zeros_like(m[0]) for m in means]
        for s, q, m in zip(sums, squares, means):
            s += m.sum(0)
            q += m.square().sum(0)
        count += means[0].shape[0]
    variances = [(q - s.square() / count) / max(count - 1, 1) for s, q in zip(sums, squares)]
    return [int((v > threshold).sum()) for v in variances], [v.cpu() for v in variances]


@torch.no_grad()
def evaluate_nll(
    model, batches: Iterable[Tensor], k: int, chunk_size: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Mean test NLL (positive nats) with k importance samples over all ``batches``.

    ``stderr`` is the standard error of the mean over images.
    """
    generator = None
    values = []
    for x in batches:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(seed)
        values.append(log_likelihood(model, x, k, chunk_size, generator).cpu())
    ll = torch.cat(values)
    stderr = ll.std().item() / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")
    return {"nll": -ll.mean().item(), "nll_stderr": stderr, "images": len(ll)}
