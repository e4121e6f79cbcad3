"""Fine-tuning from a saved run (``init_from=<ckpt>``): the weights only, nothing else.

Burda et al. 2015, sec. 5.2 continue a trained VAE as an IWAE (and the reverse). Unlike
``ckpt_path`` (resume: weights, optimizer moments, epoch and schedule position), ``init_from``
starts a new run from the old weights: a fresh optimizer at the configured learning rate, the
configured objective and schedule from epoch 0. A run that resumes (``ckpt_path``, ``resume``)
restores its own weights and ignores ``init_from``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import nn

from iwae.checkpointing import check_state_dict_matches, load_checkpoint
from iwae.errors import UserError
from iwae.evaluation import active_units, evaluate_nll
from iwae.objectives import Staged
from iwae.outputs import write_json_atomic


def load_init_weights(module: nn.Module, path: str | Path) -> None:
    """Copy the weights of the checkpoint at ``path`` into ``module`` (an `IWAEModule`).

    Read with ``torch.load(weights_only=True)`` (`load_checkpoint`), so a checkpoint from
    elsewhere cannot run code; every tensor must match the configured model by name and shape.
    """
    if not Path(path).is_file():
        raise UserError(f"init_from: checkpoint not found: {path}; pass init_from=<a .ckpt file>")
    checkpoint = load_checkpoint(path)
    check_state_dict_matches(checkpoint, module, path)
    module.load_state_dict(checkpoint["state_dict"])


class SwitchEvaluation(Callback):
    """At a staged objective's switch, evaluate the model as the paper's Table 2 "before" row.

    Burda et al. 2015, sec. 5.2 report test NLL and active units of the trained VAE (or IWAE)
    and of the same model after fine-tuning with the other objective. In a one-run staged
    objective the "before" model exists only at the switch: this callback measures it there
    (the same measures and settings as the final evaluation, ``iwae.run.evaluate``), writes
    ``switch_metrics.json`` to ``output_dir`` and logs ``switch/test_nll``.
    """

    def __init__(
        self,
        output_dir: str,
        k: int = 5000,
        chunk_size: int = 500,
        seed: int = 0,
        active_threshold: float = 0.01,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.k, self.chunk_size, self.seed = k, chunk_size, seed
        self.active_threshold = active_threshold

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        objective = pl_module.objective
        if not isinstance(objective, Staged) or trainer.current_epoch != objective.switch_epoch:
            return
        if not trainer.is_global_zero:
            return
        metrics = self.measure(pl_module.model, list(trainer.datamodule.test_dataloader()))
        metrics.update(objective=objective.stages[0].name, k=objective.stages[0].k)
        metrics["epoch"] = trainer.current_epoch
        write_json_atomic(self.output_dir / "switch_metrics.json", metrics)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"switch/test_nll": metrics["test/nll"]}, trainer.global_step
            )

    def measure(self, model: nn.Module, test: list) -> dict[str, Any]:
        """Test NLL (``k`` samples) and active units per layer, as the final evaluation."""
        was_training = model.training
        model.eval()
        nll = evaluate_nll(model, test, self.k, self.chunk_size, self.seed)
        units, _ = active_units(model, test, self.active_threshold, seed=self.seed)
        model.train(was_training)
        return {
            "test/nll": nll["nll"],
            "test/nll_stderr": nll["nll_stderr"],
            "eval/k": self.k,
            "test/active_units": sum(units),
            "test/active_units_per_layer": units,
        }


def table2_rows(run_dirs: list[Path]) -> str:
    """A markdown table like Burda et al.'s Table 2 from staged runs' JSON outputs."""
    lines = [
        "| trained as | NLL before | active units before | fine-tuned as | NLL after "
        "| active units after | epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in sorted(run_dirs):
        before = json.loads((run / "switch_metrics.json").read_text())
        after = json.loads((run / "metrics.json").read_text())
        second = after["objective"].split("_to_")[-1]
        lines.append(
            f"| {before['objective']} k={before['k']} | {before['test/nll']:.2f} "
            f"± {before['test/nll_stderr']:.2f} | {before['test/active_units']} "
            f"| {second} k={after['k']} | {after['test/nll']:.2f} ± {after['test/nll_stderr']:.2f} "
            f"| {after['test/active_units']} | {before['epoch']} + "
            f"{after['train/epochs'] - before['epoch']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m iwae.finetune --table2 <sweep dir>``: print the Table 2 rows of its runs."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--table2", type=Path, required=True, help="a run or sweep directory")
    args = parser.parse_args(argv)
    started = sorted({p.parent for p in args.table2.rglob("switch_metrics.json")})
    runs = [run for run in started if (run / "metrics.json").is_file()]
    for run in sorted(set(started) - set(runs)):
        print(f"skipped (not finished): {run}", file=sys.stderr)
    if not runs:
        sys.exit(
            f"error: no finished staged run (switch_metrics.json + metrics.json) in {args.table2}"
        )
    print(table2_rows(runs))


if __name__ == "__main__":
    main()
