"""What every training objective shares: the model it needs (`LatentVariableModel`), the output
of one step (`ObjectiveOutput`), the two abstract kinds (`TrainingObjective`, `Objective`),
the estimator settings, and `split_loss`, which gives the generative and the inference network
gradients of two different surrogates from one forward pass.

The concrete bounds are in `iwae.objectives`, which re-exports everything here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from iwae.errors import UserError, check_positive_int

ESTIMATORS = ("reparam", "stl", "dreg")


class LatentVariableModel(Protocol):
    """What an objective needs from a model (`iwae.model.IWAEModel` is one): log importance
    weights of fresh samples, and its parameters split into the two networks."""

    def log_weights(self, x: Tensor, k: int, detach_q: bool = False) -> Tensor:
        """``[B, D] -> [k, B]``: log p(x, h_i) - log q(h_i | x) for k samples h_i ~ q(h | x);
        ``detach_q`` holds q's parameters constant inside log q (STL, DReG)."""
        ...

    def generative_parameters(self) -> Sequence[nn.Parameter]:
        """theta: the parameters of p(x, h)."""
        ...

    def inference_parameters(self) -> Sequence[nn.Parameter]:
        """phi: the parameters of q(h | x)."""
        ...


def split_loss(
    model: LatentVariableModel, generative_loss: Tensor, inference_loss: Tensor
) -> Tensor:
    """A scalar whose gradient is d generative_loss/d theta on theta and d inference_loss/d phi
    on phi: the shape that DReG and PIWAE need (two surrogates, two parameter sets).

    Why this route: both losses come from one forward pass. Each ``autograd.grad`` is pruned to
    its own parameters (the theta pass never enters the encoder); a DReG step measured about
    1.5x a reparam step (k = 50, one CPU thread). The alternatives cost more (two forward
    passes, one with theta and one with phi detached) or need the model's samples (a gradient
    hook on h, which ``IWAEModel.log_weights`` does not expose). The returned value is
    ``generative_loss``'s; its gradient is the linear form sum <p, g_p>, so Lightning's own
    backward, gradient clipping, AMP scaling and DDP all-reduce see ordinary gradients.
    """
    if not generative_loss.requires_grad:  # called under no_grad: only the value matters
        return generative_loss
    theta = [p for p in model.generative_parameters() if p.requires_grad]
    phi = [p for p in model.inference_parameters() if p.requires_grad]
    g_theta = torch.autograd.grad(generative_loss, theta, retain_graph=True, allow_unused=True)
    g_phi = torch.autograd.grad(inference_loss, phi, allow_unused=True)
    pairs = zip(theta + phi, g_theta + g_phi, strict=True)
    linear = sum(((p * g).sum() for p, g in pairs if g is not None), generative_loss.new_zeros(()))
    return generative_loss.detach() + linear - linear.detach()


def check_estimator(estimator: object) -> str:
    if estimator not in ESTIMATORS:
        choices = ", ".join(ESTIMATORS)
        raise UserError(f"objective.estimator must be one of {choices}; got {estimator!r}")
    return str(estimator)


def check_unit_interval(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass
class ObjectiveOutput:
    """What one training step needs.

    loss: scalar to minimise; only its gradient matters.
    bound: ``[B]`` detached value of the bound being trained, in nats.
    log_w: ``[n, B]`` detached log weights, n = ``objective.num_samples`` (for diagnostics).
    """

    loss: Tensor
    bound: Tensor
    log_w: Tensor


class TrainingObjective(ABC):
    """What the LightningModule trains with: a loss and a bound for a minibatch, told when each
    epoch starts. `Objective` (one bound) and `Staged` (one bound, then another) are the two
    kinds."""

    name: str

    @property
    @abstractmethod
    def k(self) -> int:
        """The paper's k of the bound training now."""

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """Samples drawn per image at each step."""

    @abstractmethod
    def __call__(self, model: LatentVariableModel, x: Tensor) -> ObjectiveOutput:
        """One step's loss and bound on the minibatch ``x`` (``[B, D]``)."""

    @abstractmethod
    def bound(self, log_w: Tensor) -> Tensor:
        """``[n, B] -> [B]``: the bound's value."""

    def on_train_epoch_start(self, epoch: int) -> None:  # noqa: B027 (most bounds ignore it)
        """Called by the LightningModule at the start of every training epoch (0-based)."""


class Objective(TrainingObjective):
    """One bound: draws samples from the model and forms the bound and the surrogate(s).

    A subclass gives `bound` and `surrogate`, and `inference_surrogate` when the inference
    network can train on something else than `surrogate` (DReG's squared weights, PIWAE's
    MIWAE bound).

    Args:
        k: importance samples per bound (the paper's k; MIWAE's K).
        estimator: the inference network's gradient: ``reparam`` (the paper's), ``stl``
            (Roeder et al. 2017: log q's parameters detached, dropping the score term) or
            ``dreg`` (Tucker et al. 2018). The generative network's gradient is the same for all.
    """

    name = "objective"
    # True where the inference network always trains on its own bound (PIWAE), not only
    # with DReG.
    separate_inference = False

    def __init__(self, k: int, estimator: str = "reparam") -> None:
        self._k = check_positive_int("k", k)  # the top-level setting objective.k reads
        self.estimator = check_estimator(estimator)

    @property
    def k(self) -> int:
        return self._k

    @property
    def num_samples(self) -> int:
        return self.k

    def __call__(self, model: LatentVariableModel, x: Tensor) -> ObjectiveOutput:
        detach_q = self.estimator != "reparam"
        log_w = model.log_weights(x, self.num_samples, detach_q=detach_q)
        detached = log_w.detach()  # same values either way: detach_q only changes gradients
        loss = -self.surrogate(log_w, detached).mean()
        if self.estimator == "dreg" or self.separate_inference:
            power = 2 if self.estimator == "dreg" else 1
            inference = self.inference_surrogate(log_w, detached, power)
            if inference is not None:
                loss = split_loss(model, loss, -inference.mean())
        return ObjectiveOutput(loss=loss, bound=self.bound(detached), log_w=detached)

    @abstractmethod
    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        """``[n, B] -> [B]``: a function whose gradient is the estimator's gradient (for both
        networks unless `inference_surrogate` gives the inference network its own)."""

    def inference_surrogate(self, log_w: Tensor, detached: Tensor, power: int) -> Tensor | None:
        """``[n, B] -> [B]`` for the inference network only, called with DReG (``power=2``:
        squared normalised weights) and, where `separate_inference`, always (``power=1``
        otherwise). None: the same as `surrogate`."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, estimator={self.estimator!r})"
