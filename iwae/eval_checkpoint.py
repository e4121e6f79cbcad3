"""Evaluate a saved checkpoint without training: ``python train.py mode=eval ckpt_path=...``.

The model and data are rebuilt from the resolved run config every checkpoint carries
(``checkpoint["iwae_config"]``, a plain dict, so ``torch.load(weights_only=True)`` reads it);
only the ``eval`` group comes from the command line. The metrics.json written has the same
``test/*`` and ``eval/*`` keys as a training run's, so `iwae.report` reads both alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig
from torch import Tensor

from iwae.allowlist import rebuild_config
from iwae.checkpointing import load_checkpoint
from iwae.config_check import check_eval_values, check_top_level
from iwae.device import check_accelerator
from iwae.errors import UserError
from iwae.evaluation import test_metrics
from iwae.launch import set_torch_threads
from iwae.memory_check import check_eval_memory
from iwae.model import IWAEModel
from iwae.outputs import format_results, save_sample_grid, write_json_atomic
from iwae.run import build


@dataclass
class LoadedRun:
    """A trained model with the data it was trained on, rebuilt from a checkpoint."""

    model: IWAEModel
    datamodule: Any
    config: DictConfig
    checkpoint: dict[str, Any]

    def test_batches(self, device: torch.device | str | None = None) -> list[Tensor]:
        """The fixed-binarized test images, ``[B, D]`` batches, as a training run sees them,
        on ``device`` (default: the model's, so that model and data never sit apart)."""
        device = device or next(self.model.parameters()).device
        return [x.to(device) for x in self.datamodule.test_dataloader()]


def load_run(
    ckpt_path: str | Path, device: torch.device | str = "cpu", data_path: str | None = None
) -> LoadedRun:
    """Rebuild model (with the checkpoint's weights) and datamodule from ``ckpt_path``.

    The one loader of saved runs (``mode=eval``, `iwae.report`, `iwae.binarization_study`):
    the stored config is checked against the allow-list before anything is built, a user data
    file must still have the checksum stored with it (``data_path`` scores another on purpose),
    and weights must be finite. Each failure is a one-line `UserError`.
    """
    checkpoint = load_checkpoint(ckpt_path)
    stored = checkpoint.get("iwae_config")
    if not isinstance(stored, Mapping):
        raise UserError(
            f"{ckpt_path} carries no run config (iwae_config); was it saved by train.py?"
        )
    config = rebuild_config(stored, str(ckpt_path))
    datamodule = build_data(config, checkpoint, str(ckpt_path), data_path)
    datamodule.setup("test")
    model = build(config.model, input_dim=datamodule.input_dim)
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
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise UserError(f"{ckpt_path}: its weights do not fit its stored model ({first})") from None
    return LoadedRun(model.to(device).eval(), datamodule, config, checkpoint)


def _non_finite(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and not value.isfinite().all()


def build_data(config: DictConfig, checkpoint: Mapping, source: str, data_path: str | None) -> Any:
    """The run's prepared datamodule. A user data file (``data=npz``/``folder``) is read from
    the absolute path stored in the checkpoint and must have the SHA-256 stored with it;
    ``data_path`` (``eval.data_path``) scores another file on purpose."""
    node = config.data
    saved = checkpoint.get(str(node._target_).rsplit(".", 1)[-1])  # Lightning's datamodule state
    saved = saved.get("data_file") if isinstance(saved, Mapping) else None
    if "path" not in node:
        if data_path:
            raise UserError(f"eval.data_path is for runs on data=npz or data=folder, not {source}")
        return _prepared(node)
    if data_path:
        node.path = data_path
    elif isinstance(saved, Mapping):
        node.path = saved.get("path")
    elif not Path(str(node.path)).is_absolute():
        raise UserError(
            f"{source} stores the relative data.path {node.path!r} and no checksum, so which "
            "file it was trained on is unknown; pass eval.data_path=<that file>"
        )
    datamodule = _prepared(node)
    if not data_path and saved and saved.get("sha256") != datamodule.data_sha256:
        raise UserError(
            f"data file {node.path} changed since {source} was written (SHA-256 "
            f"{datamodule.data_sha256[:12]}..., was {str(saved.get('sha256'))[:12]}...); restore "
            f"it, or pass eval.data_path={node.path} to score it as it is now"
        )
    return datamodule


def _prepared(node: DictConfig) -> Any:
    datamodule = build(node)
    datamodule.prepare()
    return datamodule


def hydra_choice(ckpt_path: str | Path, group: str) -> str | None:
    """The config-group option (``model: two_layer``) of the run whose ``checkpoints/`` holds
    ``ckpt_path``, from its ``.hydra/hydra.yaml``; None when that file is not there."""
    hydra_yaml = Path(ckpt_path).resolve().parent.parent / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    choices = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {})
    return (choices.get("choices") or {}).get(group)


def default_device() -> torch.device:
    """Where a checkpoint is evaluated when nothing says otherwise: CUDA if present."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def eval_device(cfg: DictConfig) -> torch.device:
    """CUDA when the trainer config allows it and one is present, else the CPU."""
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    check_accelerator(accelerator)  # gpu where there is none: one line, not a silent CPU run
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def evaluate_checkpoint(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` with ``cfg.eval``; write ``metrics.json`` and ``samples.png``
    into ``output_dir``; return the metrics."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, "", "null", "last") or not Path(ckpt_path).is_file():
        raise UserError(f"mode=eval needs ckpt_path=<existing .ckpt file>, got {ckpt_path!r}")
    check_top_level(cfg)  # threads, seed: the evaluation uses them too
    check_eval_values(cfg.eval, mode="eval")
    # float sums depend on the thread count: the run's own `threads` reproduces its test/nll
    set_torch_threads(cfg.get("threads"))
    device = eval_device(cfg)
    run = load_run(ckpt_path, device, cfg.eval.get("data_path"))
    images = min(run.datamodule.eval_batch_size, len(run.datamodule.splits.test))
    check_eval_memory(
        run.model, cfg.eval, images, ("gpu" if device.type == "cuda" else "cpu", "auto")
    )
    objective = build(run.config.objective)
    metrics: dict[str, Any] = {
        "objective": objective.name,
        "k": getattr(objective, "k", None),
        "model": hydra_choice(ckpt_path, "model") or "custom",
        "data": run.datamodule.name,
        "binarization": run.datamodule.binarization,
        "seed": run.config.get("seed"),
        "eval/ckpt_path": str(ckpt_path),
        "train/steps": run.checkpoint.get("global_step"),
    }
    if getattr(run.datamodule, "data_sha256", None):  # which bytes were scored
        metrics["eval/data_path"] = str(run.datamodule.path)
        metrics["eval/data_sha256"] = run.datamodule.data_sha256
    metrics.update(test_metrics(run.model, run.test_batches(device), cfg.eval))
    output_dir.mkdir(parents=True, exist_ok=True)
    save_sample_grid(run.model, run.datamodule.image_shape, output_dir / "samples.png")
    write_json_atomic(output_dir / "metrics.json", metrics)
    print(format_results(metrics))
    return metrics
