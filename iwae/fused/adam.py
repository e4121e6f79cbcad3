"""Adam on a stacked ``[M, P]`` parameter buffer, with a per-member update mask.

The update of member m is ``torch.optim.Adam``'s (Kingma & Ba 2015; bias corrections from the
member's own step count) where ``update[m]`` is true, and nothing at all where it is false:
the moments, the step count and the parameters stay bit for bit, as when a separate run skips
an update. The mask stays on the device, so a NaN in one member costs no host synchronisation.
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
    """Adam for the stacked parameters of `iwae.fused.stacked.StackedIWAE`.

    Each member's tensors are updated by torch's fused Adam kernel (``torch._fused_adam_``,
    what ``torch.optim.Adam(fused=True)``, and so a separate run of the project, calls): one
    pass over them, where a hand-written update over ``[M, P]`` took a dozen (measured 3x
    slower on the CPU, where it is memory-bound). The kernel's ``found_inf`` argument (1.0:
    return untouched) is the per-member mask, read by the kernel itself: no host sync.

    Args:
        stacked: the parameters (its ``flat [M, P]`` buffer and `views`).
        lr, beta1, beta2, eps: torch.optim.Adam's settings (`adam_settings`).
    """

    def __init__(self, stacked, lr: float, beta1: float, beta2: float, eps: float) -> None:
        self.stacked = stacked
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        flat = stacked.flat
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        # float32 step counts, one per member, as torch.optim.Adam keeps them
        self.steps = torch.zeros(flat.shape[0], dtype=torch.float32, device=flat.device)
        self._rows()

    def _rows(self) -> None:
        """Per member, its slice of every parameter and moment (views, made once)."""
        per_buffer = [
            self.stacked.views(b) for b in (self.stacked.flat, self.exp_avg, self.exp_avg_sq)
        ]
        self.rows = [
            [[v[m] for v in views] for views in per_buffer] for m in range(len(self.steps))
        ]

    @torch.no_grad()
    def step(self, grads: list[Tensor], update: Tensor, lr_factor: float = 1.0) -> None:
        """One Adam step with ``grads`` (`StackedIWAE.views` order) for the members where
        ``update`` (``[M]`` bool) holds."""
        self.steps += update
        skip = (~update).to(torch.float32)
        for m, (params, exp_avgs, exp_avg_sqs) in enumerate(self.rows):
            torch._fused_adam_(
                params,
                [g[m] for g in grads],
                exp_avgs,
                exp_avg_sqs,
                [],
                [self.steps[m]] * len(params),
                lr=self.lr * lr_factor,
                beta1=self.beta1,
                beta2=self.beta2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
                grad_scale=None,
                found_inf=skip[m],
            )

    def state_dict(self) -> dict[str, Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            getattr(self, name).copy_(state[name])
