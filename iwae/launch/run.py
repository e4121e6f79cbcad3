"""Training, the entry point behind ``python train.py``: check, build, fit, evaluate, write."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from iwae.errors import UserError
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
from iwae.launch.config_check import check_ddp_launch, check_run_values, check_top_level
from iwae.launch.cpu_pages import populate_kernel_constants
from iwae.launch.device import set_flush_denormal, set_torch_threads
from iwae.launch.resolvers import parallel_sweep_job
from iwae.training.checkpointing import check_state_dict_matches, load_checkpoint
from iwae.training.loggers import finish_wandb, log_run_media
from iwae.training.outputs import (
    format_results,
    optional_artefact,
    save_sample_grid,
    write_json_atomic,
)
from iwae.training.resume import (
    check_resume_config,
    check_resume_data,
    resume_requested,
    stored_data_file,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Fit the configured model and write ``metrics.json``; return the metrics."""
    started = time.perf_counter()
    ckpt_path, checkpoint = resume_checkpoint(cfg, output_dir)
    # Every value, the data and the memory: fail now, not after training. What the check built
    # (the prepared data, the objective, the schedule) is what the run uses: built once.
    checked = check_run_values(cfg)
    datamodule = checked.datamodule
    check_batch_limit(cfg)
    check_ddp_launch(cfg.trainer)
    set_torch_threads(cfg.get("threads"))  # parallel runs (joblib, SLURM) share the cores
    set_flush_denormal(cfg.get("flush_denormal", True))
    populate_kernel_constants()  # log1p/softplus at full speed from the first step
    if parallel_sweep_job() and cfg.eval.get("progress") is None:
        with open_dict(cfg):  # the evaluation's bars would interleave like the training's
            cfg.eval.progress = False
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, datamodule, checked.objective, checked.schedule)
    if cfg.get("init_from") and not ckpt_path:  # a resumed fine-tune run has its own weights
        load_init_weights(module, cfg.init_from)  # Table 2: weights only, fresh optimizer
    if ckpt_path and checkpoint is not None:  # one clear line each, before Lightning starts
        check_state_dict_matches(checkpoint, module, ckpt_path)  # the clearer line for that
        stored = current_names(checkpoint.get("iwae_config"))
        check_resume_config(stored, module.config, ckpt_path)
        data_file = stored_data_file(checkpoint, datamodule)  # the same path, other bytes?
        check_resume_data(data_file, getattr(datamodule, "data_sha256", None), ckpt_path)
    trainer = build_trainer(cfg, module, output_dir)
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
    # The result first; then what a run may lack, each failure one warning line.
    write_json_atomic(output_dir / "metrics.json", metrics)
    if cfg.eval.enabled:
        save_sample_grid(module.model, datamodule.image_shape, output_dir / "samples.png")
    optional_artefact("W&B media", lambda: log_run_media(trainer.loggers, output_dir, metrics))
    # The next run of a sweep in this process gets its own W&B run.
    optional_artefact("W&B summary", lambda: finish_wandb(trainer.loggers, metrics))
    print(format_results(metrics, output_dir, time.perf_counter() - started))
    return metrics


# Keys whose change `check_state_dict_matches` words better (the first differing tensor and the
# model and data the checkpoint was written with): compared once the model is built.
ARCHITECTURE = ("model", "data")


def resume_checkpoint(
    cfg: DictConfig, output_dir: Path
) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint a run continues from (None, None for a fresh start), loaded, and any
    change outside `ARCHITECTURE` refused at once: that needs only the stored config, not the
    data, the model or Lightning, which take minutes to start on a busy machine."""
    check_top_level(cfg)  # `resume` is a boolean before it decides what to load
    resume = resume_requested(cfg.get("resume"))  # also true in a requeued SLURM job
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, resume)
    if not ckpt_path:
        return None, None
    checkpoint = load_checkpoint(ckpt_path)
    stored = current_names(checkpoint.get("iwae_config"))
    if isinstance(stored, dict):  # without one, the full check below warns once
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        outside = [{k: v for k, v in c.items() if k not in ARCHITECTURE} for c in (stored, config)]
        check_resume_config(*outside, ckpt_path)
    return ckpt_path, checkpoint


def check_batch_limit(cfg: DictConfig) -> None:
    """Refuse an integer ``trainer.limit_train_batches`` with ``steps_per_batch`` > 1.

    Lightning counts that limit in its batches, each holding ``steps_per_batch`` optimizer
    steps: ``debug=default`` (5 batches) with ``steps_per_batch=4`` trained 20 steps. A
    fraction (``0.5``) is the same share of batches as of steps, so it stays allowed.
    """
    steps = cfg.get("steps_per_batch", 1)
    limit = (cfg.get("trainer") or {}).get("limit_train_batches")
    if steps == 1 or isinstance(limit, bool) or not isinstance(limit, int):
        return
    raise UserError(
        f"trainer.limit_train_batches={limit} counts Lightning batches, which hold {steps} "
        f"optimizer steps with steps_per_batch={steps} ({limit * steps} steps); drop "
        f"trainer.limit_train_batches (or give it as a fraction, like 0.5) or set steps_per_batch=1"
    )
