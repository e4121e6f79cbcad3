"""The members' objectives on stacked log weights ``[M, K, B]``: VAE, IWAE and CIWAE.

All three are one formula with a per-member mixing weight beta (Rainforth et al. 2018's
CIWAE(beta) = beta * ELBO + (1 - beta) * L_k; VAE is beta = 1, IWAE beta = 0), and a member
with k < K uses only its first k rows (the rest are masked out). The bound is computed from
detached log weights, apart from the surrogate, as `iwae.objectives.Objective` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from iwae.errors import UserError
from iwae.objectives import CIWAE, IWAE, VAE, Objective

SUPPORTED = "objective=vae, iwae or ciwae with objective.estimator=reparam"


def mixing_weight(objective: Objective) -> float:
    """beta of CIWAE(beta) for a supported objective; a one-line `UserError` otherwise."""
    if type(objective) not in (VAE, IWAE, CIWAE) or objective.estimator != "reparam":
        raise UserError(
            f"hydra/launcher=fused trains {SUPPORTED}; got {objective!r}: "
            "run it with the default launcher"
        )
    if isinstance(objective, CIWAE):
        return objective.beta
    return 1.0 if isinstance(objective, VAE) else 0.0


@dataclass
class FusedOutput:
    """loss: ``[M]``, each member's loss (their sum is differentiated); bound: ``[M, B]``."""

    loss: Tensor
    bound: Tensor


class FusedObjective:
    """Each member's own bound and reparameterised surrogate, all members in a few operations.

    Args:
        objectives: one per member (`mixing_weight` says which are supported).
        device: where the per-member constants live.
    """

    def __init__(self, objectives: Sequence[Objective], device: torch.device | str) -> None:
        self.ks = [int(o.k) for o in objectives]
        self.k_max = max(self.ks)
        betas = [mixing_weight(o) for o in objectives]
        ks = torch.tensor(self.ks, device=device)
        self.valid = (torch.arange(self.k_max, device=device) < ks[:, None]).unsqueeze(-1)
        self.beta = torch.tensor(betas, device=device).view(-1, 1, 1)
        self.log_k = torch.log(ks.double()).float().view(-1, 1)
        self.vae_weight = self.valid / ks.view(-1, 1, 1)  # [M, K, 1]: 1/k on the valid rows
        self.k_float = ks.view(-1, 1).float()
        self.padded = any(k < self.k_max for k in self.ks)
        self.pure = all(b in (0.0, 1.0) for b in betas)

    def __call__(self, log_w: Tensor) -> FusedOutput:
        """``log_w``: ``[M, K, B]`` with gradient; rows k_m.. of member m are ignored."""
        detached = log_w.detach()
        if self.padded:
            detached = detached.masked_fill(~self.valid, -math.inf)
            log_w = log_w.masked_fill(~self.valid, 0.0)
        iwae_w = torch.softmax(detached, dim=1)  # normalised weights w~, held constant
        if self.pure:
            # A VAE member's surrogate as `iwae.bounds.elbo` forms it, a sum divided by k: its
            # gradient 1/k then rounds as a separate run's does (times 1/k rounds otherwise).
            surrogate = torch.where(
                self.beta.view(-1, 1) == 1.0,
                log_w.sum(1) / self.k_float,
                (iwae_w * log_w).sum(1),  # [M, B]: eq. 13's sum_i w~_i log w_i
            )
        else:
            weights = torch.lerp(iwae_w, self.vae_weight.expand_as(iwae_w), self.beta)
            surrogate = (weights * log_w).sum(1)
        iwae_bound = torch.logsumexp(detached, dim=1) - self.log_k
        elbo = detached.masked_fill(~self.valid, 0.0).sum(1) / self.k_float  # as its mean(0)
        beta = self.beta.view(-1, 1)
        if self.pure:  # exactly one of the two: 0 * (-inf) must not turn a VAE bound into NaN
            bound = torch.where(beta == 1.0, elbo, iwae_bound)
        else:
            bound = beta * elbo + (1 - beta) * iwae_bound
        return FusedOutput(loss=-surrogate.mean(1), bound=bound)
