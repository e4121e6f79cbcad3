"""Training objectives: each returns the bound it reports and the surrogate it differentiates.

An objective holds only its estimator settings and takes the model and the data as arguments:
the model never knows which bound trains it. The reported bound is always computed from
detached log weights, apart from the gradient surrogate, so a gradient estimator can change
the surrogate without changing the number that is logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iwae.errors import check_positive_int


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


@dataclass
class ObjectiveOutput:
    """What one training step needs.

    loss: scalar to minimise; only its gradient matters.
    bound: ``[B]`` detached value of the bound being trained, in nats.
    log_w: ``[k, B]`` detached log weights (for diagnostics).
    """

    loss: Tensor
    bound: Tensor
    log_w: Tensor


class Objective:
    """Base class: draws ``k`` samples per image from the model and forms bound and surrogate."""

    name = "objective"

    def __init__(self, k: int) -> None:
        self.k = check_positive_int("k", k)

    def __call__(self, model, x: Tensor) -> ObjectiveOutput:
        log_w = model.log_weights(x, self.k)
        detached = log_w.detach()
        return ObjectiveOutput(
            loss=-self.surrogate(log_w, detached).mean(), bound=self.bound(detached), log_w=detached
        )

    def bound(self, log_w: Tensor) -> Tensor:
        """``[k, B] -> [B]``: the bound's value."""
        raise NotImplementedError

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        """``[k, B] -> [B]``: a function whose gradient is the estimator's gradient."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"


class VAE(Objective):
    """The variational lower bound with k samples, (1/k) sum_i log w_i (no analytic KL)."""

    name = "vae"

    def bound(self, log_w: Tensor) -> Tensor:
        return elbo(log_w)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return elbo(log_w)


class IWAE(Objective):
    """The importance weighted bound L_k, with the paper's reparameterised gradient
    sum_i w~_i grad log w_i (w~ the normalised weights, held constant; eq. 13)."""

    name = "iwae"

    def bound(self, log_w: Tensor) -> Tensor:
        return iwae_bound(log_w)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return (torch.softmax(detached, dim=0) * log_w).sum(0)
