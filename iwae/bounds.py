"""The bounds as functions of log importance weights ``log_w: [k, B]`` (log p(x, h_i) -
log q(h_i | x), every constant included): the IWAE bound (Burda et al. 2015, eq. 8), the
k-sample ELBO, MIWAE and CIWAE (Rainforth et al. 2018), the effective sample size, and the
MIWAE gradient surrogate that most objectives in `iwae.objectives` are built from, and the
Renyi (VR) bound of Li & Turner 2016 with its surrogate."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """log (1/n) sum_i exp(x_i) along ``dim``, computed stably."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def iwae_bound(log_w: Tensor) -> Tensor:
    """The k-sample importance weighted bound L_k (Burda et al. 2015, eq. 8).

    Args:
        log_w: ``[k, B]`` log importance weights log p(x, h_i) - log q(h_i | x).

    Returns:
        ``[B]``: log (1/k) sum_i w_i, a lower bound on log p(x) in nats.
    """
    return log_mean_exp(log_w, 0)


def elbo(log_w: Tensor) -> Tensor:
    """The paper's k-sample VAE bound: the mean of k single-sample ELBOs, ``[k, B] -> [B]``."""
    return log_w.mean(0)


def miwae_bound(log_w: Tensor, m: int) -> Tensor:
    """MIWAE(M, K) (Rainforth et al. 2018): the mean of M independent K-sample bounds.

    Args:
        log_w: ``[M * K, B]`` log weights; group j is rows ``j*K .. (j+1)*K - 1``.
        m: number of groups M.

    Returns:
        ``[B]``: (1/M) sum_j log (1/K) sum_i w_ji, in nats.
    """
    return iwae_bound(log_w.unflatten(0, (m, -1)).transpose(0, 1)).mean(0)


def ciwae_bound(log_w: Tensor, beta: float) -> Tensor:
    """CIWAE(beta) (Rainforth et al. 2018): beta * ELBO + (1 - beta) * L_k.

    ``[k, B] -> [B]``, in nats.
    """
    return beta * elbo(log_w) + (1 - beta) * iwae_bound(log_w)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS of the normalised weights, 1 / sum_i w~_i^2 (Kong 1992), ``[k, B] -> [B]`` in [1, k]."""
    return torch.exp(-torch.logsumexp(2 * torch.log_softmax(log_w, 0), 0))


def grouped_surrogate(log_w: Tensor, detached: Tensor, m: int, power: int = 1) -> Tensor:
    """Gradient surrogate of MIWAE(M, K): (1/M) sum_j sum_i w~_ji^power log w_ji, ``[B]``.

    ``w~_ji`` are group j's normalised weights, held constant (computed from ``detached``).
    With ``power=1`` its gradient is the reparameterised gradient of the bound (Burda et al.
    2015, eq. 13); with ``power=2`` and log q's parameters detached in ``log_w`` it is the DReG
    inference-network gradient (Tucker et al. 2018): sum_i w~_i^2 dlog w_i/dh_i dh_i/dphi.

    Args:
        log_w: ``[M * K, B]`` log weights carrying the gradient.
        detached: the same values, detached.
    """
    w = torch.softmax(detached.unflatten(0, (m, -1)), dim=1)
    if power != 1:
        w = w**power
    return (w * log_w.unflatten(0, (m, -1))).sum(1).mean(0)


def renyi_bound(log_w: Tensor, alpha: float) -> Tensor:
    """The k-sample Renyi (VR) bound (Li & Turner 2016, eq. 8 estimated with k samples).

    Args:
        log_w: ``[k, B]`` log importance weights.
        alpha: the order; 0 gives `iwae_bound`, 1 (the limit, taken exactly) `elbo`.

    Returns:
        ``[B]``: 1/(1 - alpha) log (1/k) sum_i w_i^(1 - alpha), in nats. A lower bound on
        log p(x) for alpha >= 0; for alpha < 0 it is above L_k (no lower bound).
    """
    if alpha == 1:
        return elbo(log_w)
    return log_mean_exp((1 - alpha) * log_w, 0) / (1 - alpha)


def renyi_surrogate(log_w: Tensor, detached: Tensor, alpha: float) -> Tensor:
    """Gradient surrogate of `renyi_bound`: sum_i v_i log w_i, ``[k, B] -> [B]``, with
    v = softmax((1 - alpha) log w) held constant (computed from ``detached``; Li & Turner
    2016, eq. 12). alpha = 0 gives the IWAE weights w~, alpha = 1 the uniform weights 1/k."""
    return (torch.softmax((1 - alpha) * detached, dim=0) * log_w).sum(0)
