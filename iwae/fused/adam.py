"""Adam on a stacked ``[M, P]`` parameter buffer, with a per-member update mask.

The update of member m is ``torch.optim.Adam``'s (Kingma & Ba 2015, as torch writes it:
``exp_avg.lerp_``, ``exp_avg_sq.mul_.addcmul_``, bias corrections from each member's own step
count) where ``update[m]`` is true, and nothing at all where it is false: the moments, the
step count and the parameters stay bit for bit, as when a separate run skips an update. The
mask stays on the device, so a NaN in one member costs no host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from iwae.errors import UserError

ADAM_KEYS = {"_target_", "_partial_", "lr", "betas", "eps", "weight_decay"}


def adam_settings(optimizer_cfg: dict) -> dict[str, float]:
    """lr, betas and eps of the run's ``optimizer`` config; a one-line error for anything that
    the stacked Adam does not implement (another optimizer, weight decay, amsgrad, ...)."""
    target = optimizer_cfg.get("_target_")
    extra = set(optimizer_cfg) - ADAM_KEYS
    if target != "torch.optim.Adam" or extra or optimizer_cfg.get("weight_decay", 0) != 0:
        raise UserError(
            "hydra/launcher=fused trains with torch.optim.Adam (lr, betas, eps, no weight decay); "
            f"got optimizer {target} with {sorted(extra) or 'weight_decay'}: "
            "use the default launcher"
        )
    beta1, beta2 = optimizer_cfg.get("betas", (0.9, 0.999))
    return {
        "lr": float(optimizer_cfg.get("lr", 1e-3)),
        "beta1": float(beta1),
        "beta2": float(beta2),
        "eps": float(optimizer_cfg.get("eps", 1e-8)),
    }


class StackedAdam:
    """Adam for ``flat [M, P]`` with gradient ``grad [M, P]``; state in ``state_dict``."""

    def __init__(
        self, flat: Tensor, grad: Tensor, lr: float, beta1: float, beta2: float, eps: float
    ):
        self.flat, self.grad = flat, grad
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = torch.zeros(flat.shape[0], 1, dtype=torch.float64, device=flat.device)

    @torch.no_grad()
    def step(self, update: Tensor, lr_factor: float = 1.0) -> None:
        """One Adam step for the members where ``update`` (``[M]`` bool) holds."""
        on = update.view(-1, 1)
        grad = self.grad.masked_fill(~on, 0.0)  # a skipped member's NaN must not reach a moment
        self.steps += on
        weight1 = on * (1 - self.beta1)  # lerp weight 0: the moment stays exactly as it was
        self.exp_avg.lerp_(grad, weight1.to(grad.dtype))
        decay2 = torch.where(on, self.beta2, 1.0).to(grad.dtype)
        self.exp_avg_sq.mul_(decay2).addcmul_(grad, grad, value=1 - self.beta2)
        steps = self.steps.clamp(min=1)  # a member never updated: no 0/0 below
        bias_correction1 = 1 - self.beta1**steps
        bias_correction2_sqrt = torch.sqrt(1 - self.beta2**steps)
        step_size = (self.lr * lr_factor / bias_correction1 * on).to(grad.dtype)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt.to(grad.dtype)).add_(self.eps)
        self.flat.sub_(step_size * self.exp_avg / denom)

    def state_dict(self) -> dict[str, Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            getattr(self, name).copy_(state[name])

    def member_state(self, m: int) -> dict[str, float | Tensor]:
        """Member m's moments (for tests): what ``torch.optim.Adam`` keeps for one model."""
        return {
            "step": float(self.steps[m]),
            "exp_avg": self.exp_avg[m],
            "exp_avg_sq": self.exp_avg_sq[m],
        }
