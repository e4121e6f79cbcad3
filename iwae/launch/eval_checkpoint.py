"""Evaluate a saved checkpoint without training: ``python train.py mode=eval ckpt_path=...``.

The model and data are rebuilt from the resolved run config every checkpoint carries
(``checkpoint["iwae_config"]``, a plain dict, so ``torch.load(weights_only=True)`` reads it);
the ``eval`` group (and ``trainer.accelerator``, ``threads``) comes from the command line.
A ``data=`` override scores the model on other data of the same image size, on purpose, and
is recorded (``eval/data``); overrides of what the checkpoint fixes (``model=``, ``k=``,
``objective=``, ...) are refused in one line rather than silently ignored. The metrics.json
written has the same ``test/*`` and ``eval/*`` keys as a training run's, so
`iwae.reports.table1` reads both alike.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

from iwae.errors import UserError
from iwae.evaluation import test_metrics
from iwae.launch.assembly import build, hydra_choice, load_run, run_summary
from iwae.launch.config_check import check_eval_values, check_top_level
from iwae.launch.device import eval_device, set_flush_denormal, set_torch_threads
from iwae.launch.memory_check import check_eval_memory
from iwae.launch.resolvers import running_hydra
from iwae.training.outputs import format_results, save_sample_grid, write_json_atomic

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
    run = load_run(ckpt_path, device, cfg.eval.get("data_path"), data)
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
    metrics.update(test_metrics(run.model, run.test_batches(device), cfg.eval))
    output_dir.mkdir(parents=True, exist_ok=True)
    save_sample_grid(run.model, run.datamodule.image_shape, output_dir / "samples.png")
    write_json_atomic(output_dir / "metrics.json", metrics)
    print(format_results(metrics, output_dir, time.perf_counter() - started))
    return metrics
