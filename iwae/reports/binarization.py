"""Train and test NLL of each run of a binarization-study multirun, as a Markdown table.

    python -m iwae.reports.binarization multirun/binarization_study/fashion_mnist/<date>/<time>

``train.py`` reports the test NLL only; overfitting needs the NLL of the training images too.
This loads each run's last checkpoint, rebuilds its DataModule from the config stored in the
checkpoint, and estimates both with `iwae.evaluation.evaluate_nll` (the run's ``eval.k`` and
``eval.seed`` unless told otherwise):

- train: the training images (or the first ``--train-images``) as the model saw them: the one fixed
  sample (``fixed``), or one sample drawn with the evaluation seed (``dynamic``: each epoch saw
  a fresh one, so any one sample is as representative as another);
- test: the test split, binarized once with the evaluation seed, as in ``train.py``.

Writes ``binarization_study.md`` and ``binarization_study.json`` into the multirun directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from datamodules.base import binarize_once
from iwae.errors import UserError, exit_on_user_error
from iwae.evaluation import evaluate_nll
from iwae.launch.assembly import load_run as load_checkpoint_run
from iwae.reports.files import read_json, regular_file_inside
from iwae.training.outputs import write_json_atomic, write_text_atomic


def load_run(run_dir: Path) -> tuple[torch.nn.Module, Any, dict]:
    """``(model, prepared datamodule, config)`` of one run, from ``checkpoints/last.ckpt``,
    through `iwae.launch.assembly.load_run`: the one loader, which refuses a stored config
    that names anything but this project's classes."""
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    run = load_checkpoint_run(ckpt_path)
    config = OmegaConf.to_container(run.config)
    if config.get("threads"):  # the share of the cores the run itself was given
        torch.set_num_threads(int(config["threads"]))
    metrics_file = run_dir / "metrics.json"
    steps = read_json(metrics_file).get("train/steps") if metrics_file.is_file() else None
    if steps is not None and run.checkpoint.get("global_step") != steps:
        raise UserError(
            f"{ckpt_path} is from step {run.checkpoint.get('global_step')} but the run trained "
            f"{steps} steps: save last.ckpt every epoch (callbacks.checkpoint.monitor=null)"
        )
    return run.model, run.datamodule, config


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(x.split(size))


def study_run(
    run_dir: Path, k: int | None, train_images: int | None, chunk_size: int
) -> dict[str, Any]:
    """Train NLL, test NLL and their gap (nats) of one run; ``k`` defaults to the run's
    ``eval.k``, ``train_images`` to the whole training split."""
    model, dm, config = load_run(run_dir)
    k = k or config.get("eval", {}).get("k", 1000)
    train = dm.splits.train[:train_images]
    if dm.dynamic:  # stored as probabilities: evaluate one fixed sample of them
        train = binarize_once(train, dm.eval_seed + 2)
    seed = config.get("eval", {}).get("seed", 0)
    size = dm.eval_batch_size
    train_nll = evaluate_nll(model, batches(train, size), k, chunk_size, seed)
    test_nll = evaluate_nll(model, batches(dm.splits.test, size), k, chunk_size, seed)
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    return {
        "run": run_dir.name,
        "data": dm.name,
        "binarization": dm.binarization,
        "train_images": len(dm.splits.train),
        "epochs": config.get("schedule", {}).get("epochs"),
        "steps": metrics.get("train/steps"),
        "k": k,
        "train/nll": train_nll["nll"],
        "train/nll_stderr": train_nll["nll_stderr"],
        "test/nll": test_nll["nll"],
        "test/nll_stderr": test_nll["nll_stderr"],
        "gap": test_nll["nll"] - train_nll["nll"],
        "train/seconds": metrics.get("train/seconds"),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The study's Markdown table (docs/binarization.md quotes it)."""
    lines = [
        "| data | binarization | train images | epochs | k | train NLL | test NLL | gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['binarization']} | {r['train_images']:,} | {r['epochs']} "
            f"| {r['k']} | {r['train/nll']:.2f} ± {r['train/nll_stderr']:.2f} "
            f"| {r['test/nll']:.2f} ± {r['test/nll_stderr']:.2f} | {r['gap']:.2f} |"
        )
    return "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--k", type=int, help="importance samples per image (default: eval.k)")
    parser.add_argument("--train-images", type=int, help="training images scored (default: all)")
    parser.add_argument("--chunk-size", type=int, default=250)
    args = parser.parse_args(argv)
    root = args.multirun_dir
    found = root.glob("*/checkpoints/last.ckpt")
    runs = sorted(p.parent.parent for p in found if regular_file_inside(p, root))
    if not runs:
        raise UserError(f"no */checkpoints/last.ckpt under {args.multirun_dir}")
    rows = [study_run(r, args.k, args.train_images, args.chunk_size) for r in runs]
    table = markdown(rows)
    write_text_atomic(args.multirun_dir / "binarization_study.md", table)
    write_json_atomic(args.multirun_dir / "binarization_study.json", {"runs": rows})
    print(table, end="")


if __name__ == "__main__":
    main()
