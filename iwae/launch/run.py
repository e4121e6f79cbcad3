"""Training, the entry point behind ``python train.py``: check, build, fit, evaluate, write."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

from iwae.evaluation import test_metrics
from iwae.launch.allowlist import current_names
from iwae.launch.assembly import (
    build_module,
    build_trainer,
    hydra_choices,
    load_init_weights,
    resolve_ckpt_path,
    run_summary,
)
from iwae.launch.config_check import check_ddp_launch, check_run_values
from iwae.launch.device import set_flush_denormal, set_torch_threads
from iwae.launch.resolvers import parallel_sweep_job
from iwae.training.checkpointing import check_state_dict_matches, load_checkpoint
from iwae.training.loggers import finish_wandb, log_run_media
from iwae.training.outputs import format_results, save_sample_grid, write_json_atomic
from iwae.training.resume import check_resume_config, resume_requested

log = logging.getLogger(__name__)


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Fit the configured model and write ``metrics.json``; return the metrics."""
    started = time.perf_counter()
    # Every value, the data and the memory: fail now, not after training. The prepared
    # datamodule comes back (reading the data drew no global random numbers), so it is read once.
    datamodule = check_run_values(cfg)
    check_ddp_launch(cfg.trainer)
    set_torch_threads(cfg.get("threads"))  # parallel runs (joblib, SLURM) share the cores
    set_flush_denormal(cfg.get("flush_denormal", True))
    if parallel_sweep_job() and cfg.eval.get("progress") is None:
        with open_dict(cfg):  # the evaluation's bars would interleave like the training's
            cfg.eval.progress = False
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg, module, output_dir)
    resume = resume_requested(cfg.get("resume"))  # also true in a requeued SLURM job
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, resume)
    if cfg.get("init_from") and not ckpt_path:  # a resumed fine-tune run has its own weights
        load_init_weights(module, cfg.init_from)  # Table 2: weights only, fresh optimizer
    if ckpt_path:  # one clear line for a truncated, unsafe or mismatched file, before Lightning
        checkpoint = load_checkpoint(ckpt_path)
        check_state_dict_matches(checkpoint, module, ckpt_path)  # the clearer line for that
        stored = checkpoint.get("iwae_config")
        check_resume_config(current_names(stored), module.config, ckpt_path)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = run_summary(module.objective, datamodule, cfg.seed, hydra_choices().get("model"))
    metrics["train/steps"] = trainer.global_step
    metrics["train/epochs"] = trainer.current_epoch
    metrics["train/seconds"] = round(time.perf_counter() - start, 2)
    val = trainer.callback_metrics.get("val/bound")
    if val is not None:
        metrics["val/bound"] = float(val)
    if not trainer.is_global_zero:
        return metrics
    # fast_dev_run is Lightning's smoke test (no logger, no checkpoint): a model one step old
    # gets no k=5000 evaluation and writes no metrics.json that a report would read as a result.
    if trainer.fast_dev_run:
        print(format_results(metrics, output_dir, time.perf_counter() - started))
        return metrics
    if cfg.eval.enabled:
        metrics.update(test_metrics(module.model, datamodule.test_dataloader(), cfg.eval))
        save_sample_grid(module.model, datamodule.image_shape, output_dir / "samples.png")
    write_json_atomic(output_dir / "metrics.json", metrics)
    log_run_media(trainer.loggers, output_dir, metrics)
    finish_wandb(trainer.loggers, metrics)  # the next run of a sweep in this process gets its own
    print(format_results(metrics, output_dir, time.perf_counter() - started))
    return metrics
