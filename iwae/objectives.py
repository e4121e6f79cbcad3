"""Training objectives: each returns the bound it reports and the surrogate it differentiates.

An objective holds only its estimator settings and takes the model and the data as arguments:
the model never knows which bound trains it. The reported bound is always computed from
detached log weights, apart from the gradient surrogate, so a gradient estimator can change
the surrogate without changing the number that is logged.

Most bounds here are built from one piece, the MIWAE(M, K) surrogate (`grouped_surrogate`):
IWAE is M = 1, the k-sample VAE is K = 1, CIWAE mixes the two, PIWAE uses one for the
generative network and another for the inference network. Beyond those: the Renyi (VR) bound
(Li & Turner 2016), whose weights are tempered, and reweighted wake-sleep (Bornschein & Bengio
2015), whose inference network follows a score-function gradient instead of a bound's. The
bounds themselves, as functions of log weights, are in `iwae.bounds`; what all objectives
share (the base classes, `split_loss`) in `iwae.objective_base`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iwae.bounds import (
    ciwae_bound,
    elbo,
    grouped_surrogate,
    iwae_bound,
    miwae_bound,
    renyi_bound,
    renyi_surrogate,
)
from iwae.errors import UserError, check_positive_int
from iwae.objective_base import (
    ESTIMATORS,
    LatentVariableModel,
    Objective,
    ObjectiveOutput,
    TrainingObjective,
    check_estimator,
    check_unit_interval,
    split_loss,
)

__all__ = [
    "CIWAE", "ESTIMATORS", "IWAE", "MIWAE", "PIWAE", "RWS", "VAE", "LatentVariableModel",
    "Objective", "ObjectiveOutput", "Renyi", "Staged", "TrainingObjective", "check_estimator",
    "check_unit_interval", "split_loss",
]  # fmt: skip


class VAE(Objective):
    """The variational lower bound with k samples, (1/k) sum_i log w_i (no analytic KL).

    ``estimator=stl`` is Roeder et al.'s; ``dreg`` equals ``stl`` here (one sample per bound,
    so w~ = 1).
    """

    name = "vae"

    def bound(self, log_w: Tensor) -> Tensor:
        return elbo(log_w)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return elbo(log_w)


class IWAE(Objective):
    """The importance weighted bound L_k, with the paper's reparameterised gradient
    sum_i w~_i grad log w_i (w~ the normalised weights, held constant; eq. 13), or the STL or
    DReG gradient for the inference network (``estimator``)."""

    name = "iwae"

    def bound(self, log_w: Tensor) -> Tensor:
        return iwae_bound(log_w)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return grouped_surrogate(log_w, detached, m=1)

    def inference_surrogate(self, log_w: Tensor, detached: Tensor, power: int) -> Tensor:
        return grouped_surrogate(log_w, detached, m=1, power=power)


class MIWAE(Objective):
    """MIWAE(M, K) (Rainforth et al. 2018): the mean of M independent K-sample IWAE bounds.

    Args:
        k: samples per group (K); ``m``: number of groups (M). Draws M * K samples per image.
    """

    name = "miwae"

    def __init__(self, k: int, m: int = 1, estimator: str = "reparam") -> None:
        super().__init__(k, estimator)
        self.m = check_positive_int("objective.m", m)

    @property
    def num_samples(self) -> int:
        return self.m * self.k

    def bound(self, log_w: Tensor) -> Tensor:
        return miwae_bound(log_w, self.m)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return grouped_surrogate(log_w, detached, self.m)

    def inference_surrogate(self, log_w: Tensor, detached: Tensor, power: int) -> Tensor:
        return grouped_surrogate(log_w, detached, self.m, power=power)

    def __repr__(self) -> str:
        return f"MIWAE(m={self.m}, k={self.k}, estimator={self.estimator!r})"


class CIWAE(Objective):
    """CIWAE(beta) (Rainforth et al. 2018): beta * ELBO + (1 - beta) * L_k on the same k samples.

    Args:
        beta: weight of the VAE bound in [0, 1]; 1 is the VAE, 0 the IWAE.
    """

    name = "ciwae"

    def __init__(self, k: int, beta: float = 0.5, estimator: str = "reparam") -> None:
        super().__init__(k, estimator)
        self.beta = check_unit_interval("objective.beta", beta)

    def bound(self, log_w: Tensor) -> Tensor:
        return ciwae_bound(log_w, self.beta)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return self.beta * elbo(log_w) + (1 - self.beta) * grouped_surrogate(log_w, detached, 1)

    def inference_surrogate(self, log_w: Tensor, detached: Tensor, power: int) -> Tensor:
        iwae = grouped_surrogate(log_w, detached, 1, power=power)
        return self.beta * elbo(log_w) + (1 - self.beta) * iwae

    def __repr__(self) -> str:
        return f"CIWAE(k={self.k}, beta={self.beta}, estimator={self.estimator!r})"


class PIWAE(MIWAE):
    """PIWAE(M, K) (Rainforth et al. 2018): the generative network trains on the IWAE bound
    with all M * K samples, the inference network on MIWAE(M, K) of the same samples.

    The reported bound is the generative network's, L_{M*K}. ``estimator`` applies to the
    inference network's MIWAE gradient.
    """

    name = "piwae"
    separate_inference = True

    def bound(self, log_w: Tensor) -> Tensor:
        return iwae_bound(log_w)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return grouped_surrogate(log_w, detached, 1)

    def inference_surrogate(self, log_w: Tensor, detached: Tensor, power: int) -> Tensor:
        return grouped_surrogate(log_w, detached, self.m, power=power)

    def __repr__(self) -> str:
        return f"PIWAE(m={self.m}, k={self.k}, estimator={self.estimator!r})"


class Renyi(Objective):
    """The Renyi (VR) bound of order alpha (Li & Turner 2016, eq. 8 with k samples):
    L_alpha = 1/(1 - alpha) log (1/k) sum_i w_i^(1 - alpha), reparameterised.

    Its gradient is sum_i v_i grad log w_i with v = softmax((1 - alpha) log w) held constant
    (Li & Turner 2016, eq. 12): alpha = 0 is the IWAE bound and gradient exactly, alpha = 1 the
    k-sample ELBO (the limit, taken exactly), alpha -> -inf the VR-max bound.

    The logged ``bound`` is L_max(alpha, 0) of the same samples. For alpha >= 0 that is the
    bound being trained, a lower bound on log p(x) (a power mean of order 1 - alpha <= 1 is at
    most the mean of the weights, so L_alpha <= L_k). For alpha < 0 the VR value exceeds L_k
    and is no lower bound (Li & Turner 2016, Theorem 2), so the IWAE bound L_k is logged.

    Args:
        k: importance samples per bound.
        alpha: the order, any real number.
        estimator: ``reparam`` or ``stl`` (log q's parameters detached); ``dreg`` is refused:
            its weights here are not the IWAE's squared weights.
    """

    name = "renyi"

    def __init__(self, k: int, alpha: float = 0.5, estimator: str = "reparam") -> None:
        super().__init__(k, estimator)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or math.isnan(alpha):
            raise UserError(f"objective.alpha must be a real number, got {alpha!r}")
        if math.isinf(alpha):
            raise UserError("objective.alpha must be finite; for VR-max use a large negative one")
        if self.estimator == "dreg":
            raise UserError("objective=renyi supports objective.estimator=reparam or stl, not dreg")
        self.alpha = float(alpha)

    def bound(self, log_w: Tensor) -> Tensor:
        return renyi_bound(log_w, max(self.alpha, 0.0))

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return renyi_surrogate(log_w, detached, self.alpha)

    def __repr__(self) -> str:
        return f"Renyi(k={self.k}, alpha={self.alpha}, estimator={self.estimator!r})"


class RWS(Objective):
    """Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019), wake-phase phi update.

    The generative network follows the IWAE gradient sum_i w~_i grad_theta log p(x, h_i); the
    inference network the wake-phase gradient sum_i w~_i grad_phi log q(h_i | x), the samples
    h_i held constant (a score-function gradient: no path through h), w~ the normalised
    weights. The logged bound is the IWAE bound L_k of the same samples.

    The score at fixed samples is the difference of two evaluations of the same samples:
    log w with log q's parameters detached minus log w with them live has the value 0 and the
    phi-gradient grad_phi log q(h | x) at fixed h (the reparameterised paths cancel; with
    several stochastic layers each layer's input stays live in both, so they cancel there
    too). Both come from ``log_weights`` with the noise replayed: two forward passes a step.
    """

    name = "rws"

    def __init__(self, k: int) -> None:
        super().__init__(k, "reparam")

    def bound(self, log_w: Tensor) -> Tensor:
        return iwae_bound(log_w)

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        return grouped_surrogate(log_w, detached, m=1)

    def __call__(self, model: LatentVariableModel, x: Tensor) -> ObjectiveOutput:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the same noise twice
            log_w = model.log_weights(x, self.k)
        log_w_path = model.log_weights(x, self.k, detach_q=True)
        detached = log_w.detach()
        w = torch.softmax(detached, dim=0)
        # value 0; phi-gradient sum_i w~_i grad_phi log q(h_i | x) at fixed h_i
        wake = (w * (log_w_path - log_w)).sum(0)
        loss = split_loss(model, -self.surrogate(log_w, detached).mean(), -wake.mean())
        return ObjectiveOutput(loss=loss, bound=self.bound(detached), log_w=detached)

    def __repr__(self) -> str:
        return f"RWS(k={self.k})"


class Staged(TrainingObjective):
    """Train with ``first`` until epoch ``switch_epoch``, then with ``second`` (Burda et al.
    2015, sec. 5.2, Table 2: a VAE continued as an IWAE and the reverse).

    A wrapper, not a bound of its own: every call goes to the current stage. The stage is a
    function of the epoch alone, so a resumed run picks the right one. ``name`` reads
    ``vae_to_iwae``; ``k``, ``estimator`` and ``num_samples`` are the current stage's.
    """

    def __init__(self, first: Objective, second: Objective, switch_epoch: int) -> None:
        for label, obj in (("first", first), ("second", second)):
            if not isinstance(obj, Objective) or isinstance(obj, Staged):
                raise UserError(f"objective.{label} must be a single objective, got {obj!r}")
        self.stages = (first, second)
        self.switch_epoch = check_positive_int("objective.switch_epoch", switch_epoch)
        self.name = f"{first.name}_to_{second.name}"
        self.current = first

    @property
    def k(self) -> int:
        return self.current.k

    @property
    def estimator(self) -> str:
        return self.current.estimator

    @property
    def num_samples(self) -> int:
        return self.current.num_samples

    def stage(self, epoch: int) -> Objective:
        """The objective that trains epoch ``epoch`` (0-based)."""
        return self.stages[int(epoch >= self.switch_epoch)]

    def on_train_epoch_start(self, epoch: int) -> None:
        self.current = self.stage(epoch)

    def __call__(self, model: LatentVariableModel, x: Tensor) -> ObjectiveOutput:
        return self.current(model, x)

    def bound(self, log_w: Tensor) -> Tensor:
        return self.current.bound(log_w)

    def __repr__(self) -> str:
        return f"Staged({self.stages[0]!r} -> {self.stages[1]!r} at epoch {self.switch_epoch})"
