"""Evaluate a saved checkpoint without training: ``python train.py mode=eval ckpt_path=...``.

The model and data are rebuilt from the resolved run config every checkpoint carries
(``checkpoint["iwae_config"]``, a plain dict, so ``torch.load(weights_only=True)`` reads it);
the ``eval`` group (and ``trainer.accelerator``, ``threads``) comes from the command line.
A ``data=`` override scores the model on other data of the same image size, on purpose, and
is recorded (``eval/data``); overrides of what the checkpoint fixes (``model=``, ``k=``,
``objective=``, ...) are refused in one line rather than silently ignored. The metrics.json
written has the same ``test/*`` and ``eval/*`` keys as a training run's, so
`iwae.reports.table1` reads both alike.

An evaluation never writes into a training run's directory: `own_output_dir` moves
``hydra.run.dir=<training run>`` to ``<training run>/eval/<time>/`` before Hydra starts
(Hydra writes ``.hydra/`` and the log there first), and `evaluate_checkpoint` refuses such a
directory if it still gets one.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from iwae.contract import evaluation_tools, optional_missing
from iwae.errors import UserError
from iwae.evaluation import evaluate
from iwae.launch.assembly import build, hydra_choice, load_run, run_summary
from iwae.launch.config_check import check_eval_values, check_top_level
from iwae.launch.device import eval_device, set_flush_denormal, set_torch_threads
from iwae.launch.memory_check import check_eval_memory
from iwae.launch.resolvers import running_hydra
from iwae.training.outputs import format_results, save_sample_grid, write_json_atomic

log = logging.getLogger(__name__)

# What mode=eval takes from the checkpoint, so that a command-line value would be ignored.
FROM_CHECKPOINT = (
    "model", "objective", "k", "schedule", "optimizer", "experiment", "init_from", "resume",
    "flush_denormal",
)  # fmt: skip


def task_overrides() -> list[str]:
    """This job's command-line overrides; [] outside a Hydra run."""
    hc = running_hydra()
    return [] if hc is None else list(hc.overrides.task)


def eval_overrides(overrides: list[str]) -> list[str]:
    """The ``data`` overrides among ``overrides`` (honoured: the model is scored on that data);
    a one-line `UserError` for one that changes what the checkpoint fixes."""
    data = []
    for text in overrides:
        key = text.lstrip("+~").split("=", 1)[0].split("@", 1)[0]
        head = key.split(".", 1)[0].split("/", 1)[0]
        if head in FROM_CHECKPOINT:
            raise UserError(
                f"mode=eval takes {head} from the checkpoint, so {text} would be ignored; drop "
                "it (to change it, train a run with it)"
            )
        if head == "data":
            data.append(text)
    return data


def _trained_on(config: DictConfig) -> str:
    """The name of the data a stored run config trained on, without reading it."""
    target = get_class(str(config.data._target_))  # allow-listed by load_run already
    return str(getattr(target, "name", target.__name__))


def evaluate_checkpoint(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` with ``cfg.eval``; write ``metrics.json`` and ``samples.png``
    into ``output_dir``; return the metrics."""
    started = time.perf_counter()
    refuse_training_run_dir(output_dir)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, "", "null", "last") or not Path(ckpt_path).is_file():
        raise UserError(f"mode=eval needs ckpt_path=<existing .ckpt file>, got {ckpt_path!r}")
    check_top_level(cfg)  # threads, seed: the evaluation uses them too
    check_eval_values(cfg.eval, mode="eval")
    device = eval_device(cfg)
    other_data = eval_overrides(task_overrides())
    data = cfg.data if other_data else None
    if other_data and cfg.eval.get("data_path"):
        raise UserError("give either data=... or eval.data_path=..., not both")
    data_root = cfg.get("paths", {}).get("data_dir")  # this machine's data, never the file's
    run = load_run(
        ckpt_path,
        device,
        cfg.eval.get("data_path"),
        data,
        data_root=data_root,
        plugins=cfg.get("plugins"),  # the command's trust; never the checkpoint's
        tools=evaluation_tools(cfg.eval),  # AIS needs log_joint: said now, not after IS
    )
    check_stored_values(run.config, ckpt_path)
    # Float sums depend on the thread count: unless told otherwise, evaluate with the run's own
    # `threads`, which reproduces its test/nll to the last digit.
    set_torch_threads(cfg.get("threads") or run.config.get("threads"))
    set_flush_denormal(run.config.get("flush_denormal", False))  # the run's own, as threads
    images = min(run.datamodule.eval_batch_size, len(run.datamodule.splits.test))
    check_eval_memory(
        run.model, cfg.eval, images, ("gpu" if device.type == "cuda" else "cpu", "auto")
    )
    objective = build(run.config.objective)
    model_choice = hydra_choice(ckpt_path, "model")
    metrics = run_summary(objective, run.datamodule, run.config.get("seed"), model_choice)
    if other_data:  # "data" stays the data the model was trained on; eval/data is the scored
        metrics["data"] = _trained_on(run.config)
        metrics["eval/data"] = run.datamodule.name
        metrics["eval/data_overrides"] = other_data
    metrics["eval/ckpt_path"] = str(ckpt_path)
    metrics["train/steps"] = run.checkpoint.get("global_step")
    if getattr(run.datamodule, "data_sha256", None):  # which bytes were scored
        metrics["eval/data_path"] = str(run.datamodule.path)
        metrics["eval/data_sha256"] = run.datamodule.data_sha256
    measured, per_image = evaluate(run.model, run.test_batches(device), cfg.eval)
    metrics.update(measured)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.eval.get("per_image", False):
        write_per_image(output_dir / PER_IMAGE_CSV, per_image)
    write_json_atomic(output_dir / "metrics.json", metrics)  # the result before any media
    skipped = optional_missing(run.model)  # a plug-in model may draw no samples
    if skipped:
        log.warning(skipped)
    else:
        save_sample_grid(run.model, run.datamodule.image_shape, output_dir / "samples.png")
    print(format_results(metrics, output_dir, time.perf_counter() - started))
    return metrics


PER_IMAGE_CSV = "log_likelihoods.csv"


def write_per_image(path: Path, per_image: dict[str, torch.Tensor]) -> None:
    """One row per test image: ``index``, ``log_p_is`` and, where AIS ran on it,
    ``log_p_ais`` (nats; empty for images beyond ``eval.ais.images``)."""
    columns = ["log_p_is", *(["log_p_ais"] if "log_p_ais" in per_image else [])]
    values = {name: per_image[name].tolist() for name in columns}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *columns])
        for i in range(len(values["log_p_is"])):
            row = [values[c][i] if i < len(values[c]) else "" for c in columns]
            writer.writerow([i, *(repr(v) if v != "" else v for v in row)])
    tmp.replace(path)


def check_stored_values(config: DictConfig, ckpt_path: str | Path) -> None:
    """The top-level values mode=eval reads from a checkpoint's stored config (``threads``,
    ``seed``, ``k``, ``flush_denormal``), checked as a training run checks them: one line
    naming the checkpoint rather than a TypeError deep in torch."""
    try:
        check_top_level(config)
    except UserError as err:
        raise UserError(
            f"{ckpt_path} stores a bad run config ({err}); was it edited after training? "
            "Evaluate an untouched checkpoint"
        ) from None


def is_training_run_dir(path: Path) -> bool:
    """Does ``path`` hold a training run (``checkpoints/``, or a ``metrics.json`` that no
    evaluation wrote)?"""
    if (path / "checkpoints").is_dir():
        return True
    metrics = path / "metrics.json"
    if not metrics.is_file():
        return False
    try:
        return "eval/ckpt_path" not in json.loads(metrics.read_text())
    except (OSError, ValueError):
        return True  # unreadable: leave it alone


def refuse_training_run_dir(output_dir: Path) -> None:
    if is_training_run_dir(Path(output_dir)):
        raise UserError(
            f"{output_dir} is a training run's directory, and mode=eval would overwrite its "
            f"metrics.json and samples.png; pass hydra.run.dir={Path(output_dir) / 'eval'}/<name>"
        )


def _last_value(argv: list[str], key: str) -> tuple[int, str] | None:
    """(position, value) of the last ``key=value`` (``+key=``, ``++key=``) in ``argv``."""
    found = None
    for i, arg in enumerate(argv):
        name, sep, rest = arg.partition("=")
        if sep and name.lstrip("+") == key:
            found = (i, rest.strip("'\""))
    return found


def own_output_dir(argv: list[str]) -> list[str]:
    """``argv`` with a mode=eval's ``hydra.run.dir=<a training run>`` replaced by
    ``<that run>/eval/<date>_<time>/`` (numbered if taken), said in one line on stderr; other
    command lines unchanged. Run before Hydra, which writes into the directory first."""
    mode, run_dir = _last_value(argv, "mode"), _last_value(argv, "hydra.run.dir")
    if mode is None or mode[1] != "eval" or run_dir is None or "${" in run_dir[1]:
        return argv
    if "-m" in argv or "--multirun" in argv or not is_training_run_dir(Path(run_dir[1])):
        return argv
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    target, n = Path(run_dir[1]) / "eval" / stamp, 1
    while target.exists():
        target, n = Path(run_dir[1]) / "eval" / f"{stamp}-{n}", n + 1
    print(
        f"mode=eval: {run_dir[1]} holds a training run, left as it is; this evaluation "
        f"writes to {target}",
        file=sys.stderr,
    )
    argv = list(argv)
    argv[run_dir[0]] = f"hydra.run.dir={target}"
    return argv
