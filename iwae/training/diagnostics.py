"""`GradientDiagnostics`: the effective sample size and gradient SNR of `iwae.diagnostics`,
logged on a schedule during training (``callbacks=diagnostics``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from iwae.bounds import effective_sample_size
from iwae.diagnostics import fork_rng, gradient_snr
from iwae.errors import check_positive_int
from iwae.objectives import Objective


class GradientDiagnostics(Callback):
    """Logs ``diag/ess``, ``diag/ess_fraction`` (ESS / samples) and ``diag/snr_inference``,
    ``diag/snr_generative`` every ``every_n_steps`` training steps, on that step's minibatch.

    Args:
        every_n_steps: the schedule; the SNR costs ``draws`` extra forward/backward passes.
        draws: gradient draws per SNR estimate (0 logs the ESS only).
    """

    def __init__(self, every_n_steps: int = 1000, draws: int = 20) -> None:
        self.every_n_steps = check_positive_int(
            "callbacks.gradient_diagnostics.every_n_steps", every_n_steps
        )
        if draws != 0:
            check_positive_int("callbacks.gradient_diagnostics.draws (0 or >= 2)", draws, minimum=2)
        self.draws = draws

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step - 1  # the step that just ran
        if step % self.every_n_steps != 0 or not trainer.loggers:
            return
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        metrics = self.measure(pl_module.objective, pl_module.model, x)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def measure(self, objective: Objective, model, x: Tensor) -> dict[str, float]:
        """ESS and (with ``draws``) gradient SNR of ``objective`` on ``x``, ``[B, D]``."""
        with fork_rng(x.device):
            with torch.no_grad():
                log_w = model.log_weights(x, objective.num_samples)  # [n, B]
            ess = effective_sample_size(log_w).mean().item()
            metrics = {"diag/ess": ess, "diag/ess_fraction": ess / log_w.shape[0]}
            if self.draws:
                with torch.enable_grad():
                    snr = gradient_snr(objective, model, x, self.draws)
                metrics.update({f"diag/snr_{name}": value for name, value in snr.items()})
        return metrics
