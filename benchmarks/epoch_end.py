"""What an epoch end costs against the steps: validation, each checkpoint write, the rest
(loggers, callbacks, Lightning's loop), in a real ``train.py`` run.

The run is the project's own (`iwae.launch.run.train`, in this process) with one extra
callback, `EpochTimer`, which times every training batch (from its start hook to its end
hook), every validation pass and every checkpoint write (it wraps the trainer's checkpoint
I/O), and every epoch end (from the epoch's last batch end to the next epoch's first batch
start, or to the end of training). The final test evaluation is off: it is not training.

    python -m benchmarks.epoch_end --preset quickstart        # make quickstart, timed
    python -m benchmarks.epoch_end --preset paper             # the paper protocol's epoch end

``paper``: the paper protocol's epoch end (400 validation digits at k = 100, the CSV logger,
``steps_per_batch=10``, the default callbacks) on the bundled digits, which stand in for
MNIST where it cannot be downloaded; its share of an epoch is taken against the paper's
2,980 steps an epoch (59,600 training digits in batches of 20) at the measured step time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from benchmarks.common import machine, median, print_report, set_threads
from iwae.launch.resolvers import register_resolvers

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

CONF_OVERRIDES = {
    "quickstart": ["experiment=quickstart"],
    "paper": [
        "experiment=quickstart",  # the bundled digits, one layer, k = 5 ...
        "data.split=[4000,400,500]",  # ... validated on 400 digits, as the paper's MNIST split
        "logger=csv",
        "steps_per_batch=10",
        "schedule.epochs=6",
    ],
}
PAPER_STEPS_PER_EPOCH = 59_600 // 20
TIMERS: list[EpochTimer] = []


class EpochTimer(pl.Callback):
    """Wall-clock times of a fit's batches, validations, checkpoint writes and epoch ends."""

    def __init__(self) -> None:
        self.batches: list[float] = []
        self.validations: list[float] = []
        self.writes: list[tuple[str, float]] = []
        self.epoch_ends: list[dict[str, Any]] = []
        self.fit_seconds = 0.0
        self._t: dict[str, float] = {}
        self._end: dict[str, Any] | None = None
        TIMERS.append(self)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def timed_save(checkpoint: dict, path: Any, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            save(checkpoint, path, *args, **kwargs)
            self.writes.append((Path(path).name, time.perf_counter() - start))

        io.save_checkpoint = timed_save

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t["fit"] = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        self._close_epoch_end(now)
        self._t["batch"] = now

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        self.batches.append(now - self._t["batch"])
        self._t["last_batch_end"] = now
        self._end = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates before this hook (at the epoch's last batch), when it validates
        if self._end is None:
            self._end = {"start": self._t["last_batch_end"], "writes": len(self.writes)}
            self._end["validations"] = len(self.validations)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t["val"] = time.perf_counter()
        if self._end is None:  # the epoch end begins at the last batch's end
            self._end = {"start": self._t["last_batch_end"], "writes": len(self.writes)}
            self._end["validations"] = len(self.validations)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validations.append(time.perf_counter() - self._t["val"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self._close_epoch_end(now)
        self.fit_seconds = now - self._t["fit"]

    def _close_epoch_end(self, now: float) -> None:
        if self._end is None:
            return
        end, self._end = self._end, None
        writes = self.writes[end["writes"] :]
        validation = sum(self.validations[end["validations"] :])
        written = sum(seconds for _, seconds in writes)
        self.epoch_ends.append(
            {
                "seconds": now - end["start"],
                "validation": validation,
                "checkpoint_writes": [name for name, _ in writes],
                "writing": written,
                "rest": now - end["start"] - validation - written,
            }
        )


def run(preset: str, extra: Sequence[str], workdir: Path) -> EpochTimer:
    """One timed ``train.py`` run of ``preset`` with ``extra`` overrides."""
    from iwae.launch.run import train

    overrides = [
        *CONF_OVERRIDES[preset],
        "eval.enabled=false",
        "trainer.enable_progress_bar=false",
        f"+callbacks.epoch_timer._target_={__name__}.EpochTimer",
        *extra,
    ]
    TIMERS.clear()
    train(compose_config(overrides, workdir), workdir)
    return TIMERS[-1]


def compose_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The project's config with ``overrides``, writing to ``output_dir`` (no Hydra run)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def summary(timer: EpochTimer, preset: str, steps_per_batch: int) -> dict[str, Any]:
    ends = timer.epoch_ends
    steps = len(timer.batches) * steps_per_batch
    in_steps = sum(timer.batches)
    in_ends = sum(e["seconds"] for e in ends)
    row: dict[str, Any] = {
        "preset": preset,
        "steps": steps,
        "fit_seconds": timer.fit_seconds,
        "in_steps_seconds": in_steps,
        "epoch_ends": len(ends),
        "in_epoch_ends_seconds": in_ends,
        "outside_steps_share": 1 - in_steps / timer.fit_seconds,
        "epoch_end_share": in_ends / timer.fit_seconds,
        "epoch_end_median_s": median([e["seconds"] for e in ends]),
        "validation_median_s": median(timer.validations) if timer.validations else 0.0,
        "validations": len(timer.validations),
        "writes": len(timer.writes),
        "write_median_s": median([s for _, s in timer.writes]) if timer.writes else 0.0,
        "rest_median_s": median([e["rest"] for e in ends]),
        "ms_per_step": 1e3 * in_steps / steps,
    }
    if preset == "paper":  # one epoch end against the paper's epoch of 2,980 steps
        epoch = PAPER_STEPS_PER_EPOCH * in_steps / steps
        row["paper_epoch_end_share"] = row["epoch_end_median_s"] / (
            epoch + row["epoch_end_median_s"]
        )
    row["epoch_end_detail"] = ends
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", nargs="+", default=["quickstart"], choices=list(CONF_OVERRIDES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    start = machine()
    rows = []
    for preset in args.preset:
        with tempfile.TemporaryDirectory() as workdir:
            timer = run(preset, [f"threads={args.threads}", *args.override], Path(workdir))
        spb = 10 if "steps_per_batch=10" in CONF_OVERRIDES[preset] + args.override else 1
        rows.append(summary(timer, preset, spb))
    report = {"benchmark": "epoch_end", "machine": start, "overrides": args.override, "rows": rows}
    report["machine"]["load_average_1m_end"] = machine()["load_average_1m"]
    columns = [
        ("preset", "preset"),
        ("steps", "steps"),
        ("fit_seconds", "fit s"),
        ("in_steps_seconds", "in steps s"),
        ("outside_steps_share", "outside steps"),
        ("epoch_ends", "epoch ends"),
        ("epoch_end_share", "epoch-end share"),
        ("epoch_end_median_s", "epoch end s"),
        ("validation_median_s", "validation s"),
        ("write_median_s", "write s"),
        ("rest_median_s", "rest s"),
        ("paper_epoch_end_share", "of a paper epoch"),
    ]
    print_report(report, columns, args.out)
    return report


if __name__ == "__main__":
    main()
