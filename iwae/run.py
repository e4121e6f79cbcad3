"""Wiring for ``train.py``: build everything from the Hydra config, fit, evaluate, write outputs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from iwae.checkpointing import atomic_checkpoint_plugins, check_state_dict_matches, load_checkpoint
from iwae.config_check import check_run_values
from iwae.errors import UserError
from iwae.evaluation import test_metrics
from iwae.finetune import load_init_weights
from iwae.launch import (  # importing it also registers the W&B sweep resolvers
    check_ddp_launch,
    finish_wandb,
    resume_requested,
    set_torch_threads,
)
from iwae.module import IWAEModule
from iwae.outputs import format_results, save_sample_grid, write_json_atomic
from iwae.resume import check_resume_config, use_epoch_exact_fit_loop

log = logging.getLogger(__name__)


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a `UserError` from a constructor through as itself
    (Hydra wraps it in a multi-line InstantiationException)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def build_module(cfg: DictConfig, datamodule) -> IWAEModule:
    """Model (output bias from the training data), objective, optimizer and schedule."""
    model = build(cfg.model, input_dim=datamodule.input_dim)
    model.init_output_bias(datamodule.train_pixel_mean())
    return IWAEModule(
        model=model,
        objective=build(cfg.objective),
        optimizer=build(cfg.optimizer),
        schedule=build(cfg.schedule),
        val_k=cfg.eval.val_k,
        val_seed=cfg.eval.seed,
        log_every_n_steps=cfg.trainer.get("log_every_n_steps", 50),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_trainer(cfg: DictConfig, module: IWAEModule, output_dir: Path) -> pl.Trainer:
    loggers = [build(node) for node in (cfg.get("logger") or {}).values() if node]
    callbacks = [build(node) for node in (cfg.get("callbacks") or {}).values() if node]
    max_epochs = cfg.trainer.get("max_epochs") or module.schedule.epochs
    trainer = build(
        cfg.trainer,
        max_epochs=max_epochs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(output_dir),
        # Atomic checkpoint writes and weights_only loads (iwae/checkpointing.py).
        plugins=atomic_checkpoint_plugins([build(p) for p in cfg.trainer.get("plugins") or []]),
    )
    use_epoch_exact_fit_loop(trainer)  # resuming with max_steps set skipped an epoch
    return trainer


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path, resume: bool = False) -> str | None:
    """``last`` means this run directory's last checkpoint; anything else must exist.

    ``resume=True`` (no ckpt_path) continues from ``last`` if there is one and starts afresh
    otherwise, so one command serves the first start and every restart after a kill or requeue.
    """
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path in (None, "", "null"):
        return str(last) if resume and last.is_file() else None
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass ckpt_path=<existing .ckpt file>")
    return str(path)


def evaluate(cfg: DictConfig, module: IWAEModule, datamodule) -> dict[str, Any]:
    """The paper's test measures (NLL with eval.k samples, active units per layer): the same
    keys `python train.py mode=eval` writes for a saved checkpoint."""
    return test_metrics(module.model, datamodule.test_dataloader(), cfg.eval)


def hydra_choices() -> dict[str, str]:
    """The config-group options of this run (``model: two_layer``), when Hydra is running."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except ValueError:  # composed outside a Hydra run (tests, notebooks)
        return {}


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Fit the configured model and write ``metrics.json``; return the metrics."""
    # Every value, the data and the memory: fail now, not after training. The prepared
    # datamodule comes back (reading the data drew no global random numbers), so it is read once.
    datamodule = check_run_values(cfg)
    check_ddp_launch(cfg.trainer)
    set_torch_threads(cfg.get("threads"))  # parallel runs (joblib, SLURM) share the cores
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
        check_resume_config(checkpoint.get("iwae_config"), module.config, ckpt_path)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics: dict[str, Any] = {
        "objective": module.objective.name,
        "k": module.objective.k,
        "model": hydra_choices().get("model", "custom"),
        "data": datamodule.name,
        "binarization": datamodule.binarization,
        "seed": cfg.seed,
        "train/steps": trainer.global_step,
        "train/epochs": trainer.current_epoch,
        "train/seconds": round(time.perf_counter() - start, 2),
    }
    val = trainer.callback_metrics.get("val/bound")
    if val is not None:
        metrics["val/bound"] = float(val)
    if not trainer.is_global_zero:
        return metrics
    if cfg.eval.enabled:
        metrics.update(evaluate(cfg, module, datamodule))
        save_sample_grid(module.model, datamodule.image_shape, output_dir / "samples.png")
    write_json_atomic(output_dir / "metrics.json", metrics)
    finish_wandb(trainer, metrics)  # the next run of a sweep in this process gets its own
    print(format_results(metrics))
    return metrics
