"""A bound of one's own, in one file outside the package: the IWAE bound trained with tempered
sample weights.

The reported bound is the IWAE bound L_k itself (inherited), a true lower bound on log p(x) in
nats, so runs trained with it are compared with the paper's on the same footing. Only the
gradient changes: each sample's gradient is weighted by softmax(temperature * log w) instead of
the normalised weights softmax(log w) (temperature 1 is the IWAE gradient, 0 the VAE's).

    PYTHONPATH=examples/tempered_bound python train.py plugins=[mybound] \
        objective._target_=mybound.TemperedIWAE +objective.temperature=0.5
"""

import torch
from torch import Tensor

from iwae.errors import UserError
from iwae.objectives import IWAE


class TemperedIWAE(IWAE):
    name = "tempered"  # the objective column of metrics.json and the reports

    def __init__(self, k: int, estimator: str = "reparam", temperature: float = 1.0) -> None:
        super().__init__(k, estimator)
        if not 0 <= temperature <= 1:
            raise UserError(f"objective.temperature must be in [0, 1], got {temperature!r}")
        self.temperature = temperature

    def surrogate(self, log_w: Tensor, detached: Tensor) -> Tensor:
        """``[k, B] -> [B]``: sum_i softmax(t log w)_i log w_i, the weights held constant."""
        return (torch.softmax(self.temperature * detached, 0) * log_w).sum(0)
