"""The one place that turns a config into objects: data, model, module, trainer, and a saved
run rebuilt from its checkpoint.

The entry points sit above it, side by side: training (`iwae.launch.run`), ``mode=eval``
(`iwae.launch.eval_checkpoint`), the fused launcher (`iwae.fused`) and the report tools
(`iwae.reports`). None of them calls ``hydra.utils.instantiate`` itself: `build` lets a
constructor's one-line `UserError` through, which Hydra would wrap in a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from iwae import contract
from iwae.errors import UserError
from iwae.launch.allowlist import ALLOWED_TARGETS, rebuild_config
from iwae.launch.cpu_pages import populate_kernel_constants
from iwae.launch.plugins import trust
from iwae.launch.resolvers import parallel_sweep_job, running_hydra
from iwae.training.checkpointing import (
    atomic_checkpoint_plugins,
    check_state_dict_matches,
    load_checkpoint,
)
from iwae.training.loggers import run_config
from iwae.training.module import IWAEModule
from iwae.training.outputs import code_commit
from iwae.training.resume import use_epoch_exact_fit_loop

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


def build_module(
    cfg: DictConfig, datamodule: Any, objective: Any = None, schedule: Any = None
) -> IWAEModule:
    """Model (output bias from the training data), objective, optimizer and schedule; the
    ``objective`` and ``schedule`` already built by the config check when given.

    Model and objective are checked against what the run will ask of them (`iwae.contract`):
    training, the validation bound and, when the run evaluates, the tools ``eval`` turns on.
    """
    model = build(cfg.model, input_dim=datamodule.input_dim)
    objective = objective if objective is not None else build(cfg.objective)
    check_contract(model, run_tools(cfg), objective)
    if hasattr(model, "init_output_bias"):  # optional for a plug-in model (iwae.contract)
        model.init_output_bias(datamodule.train_pixel_mean())
    return IWAEModule(
        model=model,
        objective=objective,
        optimizer=build(cfg.optimizer),
        schedule=schedule if schedule is not None else build(cfg.schedule),
        val_k=cfg.eval.val_k,
        val_seed=cfg.eval.seed,
        log_every_n_steps=cfg.trainer.get("log_every_n_steps", 50),
        config=OmegaConf.to_container(cfg, resolve=True),
        hparams=run_config(cfg, hydra_choices()),
        steps_per_batch=datamodule.steps_per_batch,
    )


def run_tools(cfg: DictConfig) -> list[str]:
    """The tools of `iwae.contract` a training run uses: training and the validation bound,
    and the final evaluation's when it runs (``eval.enabled``)."""
    tools = [contract.TRAINING, contract.EVALUATION]
    if cfg.eval.get("enabled", True):
        tools += contract.evaluation_tools(cfg.eval)
    return list(dict.fromkeys(tools))


def check_contract(model: Any, tools: Sequence[str], objective: Any = None) -> None:
    """`iwae.contract`'s checks: a one-line `UserError` for a required method the model (or
    objective) lacks; one warning line for the sample grid a model cannot draw."""
    contract.check_model(model, tools)
    if objective is not None:
        contract.check_objective(objective)
    skipped = contract.optional_missing(model)
    if skipped:
        log.warning(skipped)


def build_trainer(cfg: DictConfig, module: IWAEModule, output_dir: Path) -> pl.Trainer:
    """Lightning's Trainer with the configured loggers, callbacks and plugins."""
    loggers = [build(node) for node in (cfg.get("logger") or {}).values() if node]
    callbacks = [build(node) for node in (cfg.get("callbacks") or {}).values() if node]
    max_epochs = cfg.trainer.get("max_epochs") or module.schedule.epochs
    trainer = build(
        cfg.trainer,
        max_epochs=max_epochs,
        enable_progress_bar=progress_bar_enabled(cfg.trainer.get("enable_progress_bar")),
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(output_dir),
        # Atomic checkpoint writes and weights_only loads (iwae/training/checkpointing.py).
        plugins=atomic_checkpoint_plugins([build(p) for p in cfg.trainer.get("plugins") or []]),
    )
    use_epoch_exact_fit_loop(trainer)  # resuming with max_steps set skipped an epoch
    return trainer


def progress_bar_enabled(setting: Any) -> bool:
    """``trainer.enable_progress_bar``: true or false as set; null (the default) shows
    Lightning's bar only when stdout is a terminal (its bar ignores that: a log file gets a
    line per refresh) and never in a parallel sweep's jobs, whose bars share one line."""
    if setting is not None:
        return bool(setting)
    return sys.stdout.isatty() and not parallel_sweep_job()


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


def load_init_weights(module: nn.Module, path: str | Path) -> None:
    """Copy the weights of the checkpoint at ``path`` into ``module`` (``init_from=``).

    Burda et al. 2015, sec. 5.2 continue a trained VAE as an IWAE: the weights only, with a
    fresh optimizer and schedule. Read with ``torch.load(weights_only=True)``
    (`load_checkpoint`), so a checkpoint from elsewhere cannot run code; every tensor must
    match the configured model by name and shape.
    """
    if not Path(path).is_file():
        raise UserError(f"init_from: checkpoint not found: {path}; pass init_from=<a .ckpt file>")
    checkpoint = load_checkpoint(path)
    check_state_dict_matches(checkpoint, module, path)
    module.load_state_dict(checkpoint["state_dict"])


def hydra_choices() -> dict[str, str]:
    """The config-group options of this run (``model: two_layer``), when Hydra is running;
    {} for a config composed outside a Hydra run (tests, notebooks)."""
    hc = running_hydra()
    return {} if hc is None else {k: v for k, v in hc.runtime.choices.items() if v is not None}


def hydra_choice(ckpt_path: str | Path, group: str) -> str | None:
    """The config-group option (``model: two_layer``) of the run whose ``checkpoints/`` holds
    ``ckpt_path``, from its ``.hydra/hydra.yaml``; None when that file is not there."""
    hydra_yaml = Path(ckpt_path).resolve().parent.parent / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    choices = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {})
    return (choices.get("choices") or {}).get(group)


def run_summary(objective: Any, datamodule: Any, seed: Any, model_choice: str | None) -> dict:
    """The keys every ``metrics.json`` opens with (training, ``mode=eval``, fused members), so
    `iwae.reports.table1` groups runs alike whichever entry point wrote them."""
    return {
        "objective": objective.name,
        "k": getattr(objective, "k", None),
        "model": model_choice or "custom",
        "data": datamodule.name,
        "binarization": datamodule.binarization,
        "seed": seed,
        "code/commit": code_commit(),
    }


@dataclass
class LoadedRun:
    """A trained model with the data it was trained on, rebuilt from a checkpoint."""

    model: nn.Module
    datamodule: Any
    config: DictConfig
    checkpoint: dict[str, Any]

    def test_batches(self, device: torch.device | str | None = None) -> list[Tensor]:
        """The fixed-binarized test images, ``[B, D]`` batches, as a training run sees them,
        on ``device`` (default: the model's, so that model and data never sit apart)."""
        device = device or next(self.model.parameters()).device
        return [x.to(device) for x in self.datamodule.test_dataloader()]


def load_run(
    ckpt_path: str | Path,
    device: torch.device | str = "cpu",
    data_path: str | None = None,
    data: DictConfig | None = None,
    data_root: str | None = None,
    *,
    plugins: Sequence[str] | str | None = None,
    tools: Sequence[str] = (contract.EVALUATION,),
) -> LoadedRun:
    """Rebuild model (with the checkpoint's weights) and datamodule from ``ckpt_path``.

    The one loader of saved runs (``mode=eval``, every report tool, the Python API): the
    stored config is checked against the allow-list before anything is built, a user data
    file must still have the checksum stored with it (``data_path`` scores another on
    purpose), and weights must be finite. Each failure is a one-line `UserError`. ``data`` (a
    ``data`` config node) scores the model on other data, of the same image size, on purpose.
    A dataset's files are read from ``data_root`` (the command line's ``paths.data_dir``;
    default: this machine's data directory), never from where the checkpoint says, and never
    downloaded; a data file's stored path is opened only inside that directory or the run's
    own directory (`stored_data_path`).

    A plug-in class in the stored config is rebuilt when this command trusts its module:
    ``plugins`` (the command line's), ``$IWAE_PLUGINS`` and installed entry points
    (`iwae.launch.plugins`); never a ``plugins`` stored in the checkpoint. The model must have
    what ``tools`` (`iwae.contract`) need: by default the importance-sampled log-likelihood.
    """
    checkpoint = load_checkpoint(ckpt_path)
    stored = checkpoint.get("iwae_config")
    if not isinstance(stored, Mapping):
        raise UserError(
            f"{ckpt_path} carries no run config (iwae_config); was it saved by train.py?"
        )
    config = rebuild_config(stored, str(ckpt_path), trust(plugins))
    if data is not None:
        datamodule = prepared_data(data)
    else:
        datamodule = build_data(config, checkpoint, str(ckpt_path), data_path, data_root)
    datamodule.setup("test")
    populate_kernel_constants()  # every report tool evaluates what it loads: at full speed
    model = build(config.model, input_dim=datamodule.input_dim)
    try:
        contract.check_model(model, tools)  # (the sample grid's warning is mode=eval's)
    except UserError as err:
        raise UserError(f"{ckpt_path}: {err}") from None
    prefix = "model."
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    bad = next((k for k, v in state.items() if _non_finite(v)), None)
    if bad is not None:
        raise UserError(
            f"{ckpt_path} holds non-finite weights (model.{bad}): the run diverged before it "
            "was saved; evaluate an earlier checkpoint"
        )
    trained = _trained_input_dim(state)
    if trained is not None and trained != datamodule.input_dim:
        scored = data_path or f"data={datamodule.name}"
        shape = "x".join(str(n) for n in datamodule.image_shape)
        raise UserError(
            f"{scored} has {datamodule.input_dim} pixels an image ({shape}), but the model in "
            f"{ckpt_path} was trained on {trained} pixels an image; score it on data of its "
            "own image size"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        if data is not None:
            raise UserError(
                f"data={datamodule.name} has {datamodule.input_dim} pixels an image, but the "
                f"model in {ckpt_path} was trained on images of another size; evaluate it on "
                "data of its own image size"
            ) from None
        first = str(err).strip().splitlines()[-1].strip()
        raise UserError(f"{ckpt_path}: its weights do not fit its stored model ({first})") from None
    return LoadedRun(model.to(device).eval(), datamodule, config, checkpoint)


def _trained_input_dim(state: Mapping[str, Any]) -> int | None:
    """Pixels an image of the data a model's weights were trained on: the length of the first
    decoder layer's output bias (one Bernoulli mean a pixel); None if the state has none."""
    bias = state.get("decoder.0.head.bias")
    return int(bias.shape[0]) if isinstance(bias, Tensor) and bias.dim() == 1 else None


def _non_finite(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and not value.isfinite().all()


def machine_data_dir() -> str:
    """This machine's data directory, as ``paths.data_dir`` (conf/paths) sets it."""
    return os.environ.get("IWAE_DATA_DIR") or "data"


def build_data(
    config: DictConfig,
    checkpoint: Mapping,
    source: str,
    data_path: str | None,
    data_root: str | None = None,
) -> Any:
    """The run's prepared datamodule. A user data file (``data=npz``/``folder``) is read from
    the absolute path stored in the checkpoint, if that lies inside this machine's data
    directory or the run's own directory (`stored_data_path`), and must have the SHA-256
    stored with it; ``data_path`` (``eval.data_path``) scores another file on purpose.

    A dataset's files are looked for in this machine's data directory and never downloaded:
    the stored config's root, URL and download setting were dropped by `rebuild_config`, so
    a crafted checkpoint cannot fetch files or write them anywhere."""
    node = config.data
    root = data_root or machine_data_dir()
    if _takes_root(str(node._target_)):  # a plug-in data module may have no root
        node.root = root
    saved = checkpoint.get(str(node._target_).rsplit(".", 1)[-1])  # Lightning's datamodule state
    saved = saved.get("data_file") if isinstance(saved, Mapping) else None
    if "path" not in node:
        if data_path:
            raise UserError(f"eval.data_path is for runs on data=npz or data=folder, not {source}")
        return prepared_data(node, download=False)
    if data_path:
        node.path = data_path
    elif isinstance(saved, Mapping):
        node.path = stored_data_path(saved.get("path"), source, root)
    elif not Path(str(node.path)).is_absolute():
        raise UserError(
            f"{source} stores the relative data.path {node.path!r} and no checksum, so which "
            "file it was trained on is unknown; pass eval.data_path=<that file>"
        )
    else:
        node.path = stored_data_path(node.path, source, root)
    datamodule = prepared_data(node, download=False)
    if not data_path and saved and saved.get("sha256") != datamodule.data_sha256:
        raise UserError(
            f"data file {node.path} changed since {source} was written (SHA-256 "
            f"{datamodule.data_sha256[:12]}..., was {str(saved.get('sha256'))[:12]}...); restore "
            f"it, or pass eval.data_path={node.path} to score it as it is now"
        )
    return datamodule


def run_directory(ckpt_path: str | Path) -> Path | None:
    """The run directory of a checkpoint at ``<run>/checkpoints/<name>.ckpt``; None for a
    checkpoint anywhere else."""
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def stored_data_path(path: Any, source: str, data_root: str) -> str:
    """``path`` (a data file named by the checkpoint ``source``), if it lies, links followed,
    inside this machine's data directory ``data_root`` or the run's own directory; otherwise a
    one-line `UserError`: a checkpoint cannot make a rebuild open, parse or walk a file of its
    choosing (``/etc/passwd``, ``/usr/share``). The command line may name any file."""
    resolved = Path(str(path)).resolve()
    run_dir = run_directory(source)
    places = [Path(data_root).resolve(), *([run_dir] if run_dir is not None else [])]
    if any(resolved.is_relative_to(place) for place in places):
        return str(path)
    where = " or ".join(str(p) for p in places)
    raise UserError(
        f"{source} names the data file {path}, outside this machine's data directory and the "
        f"run's own directory ({where}), so it is not opened on the checkpoint's word; to "
        f"score that file, pass eval.data_path={path} (or keep data files in the data "
        "directory, $IWAE_DATA_DIR)"
    )


def _takes_root(target: str) -> bool:
    """Whether the data module ``target`` takes a ``root`` (this project's all do)."""
    if target in ALLOWED_TARGETS["data"]:
        return True
    from hydra.utils import get_class

    from iwae.launch.value_checks import constructor_arguments

    accepted = constructor_arguments(get_class(target))
    return accepted is None or "root" in accepted


def prepared_data(node: DictConfig, download: bool = True) -> Any:
    """The datamodule of a ``data`` config node, its files read and split; ``download=False``
    only looks for them locally, whatever the node says."""
    datamodule = build(node)
    if not download and hasattr(datamodule, "allow_download"):
        datamodule.allow_download = False
    datamodule.prepare()
    return datamodule
