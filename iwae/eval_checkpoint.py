"""Evaluate a saved checkpoint without training: ``python train.py mode=eval ckpt_path=...``.

The model and data are rebuilt from the resolved run config every checkpoint carries
(``checkpoint["iwae_config"]``, a plain dict, so ``torch.load(weights_only=True)`` reads it);
only the ``eval`` group comes from the command line. The metrics.json written has the same
``test/*`` and ``eval/*`` keys as a training run's, so `iwae.report` reads both alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from iwae.checkpointing import load_checkpoint
from iwae.errors import UserError
from iwae.evaluation import test_metrics
from iwae.launch import set_torch_threads
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

    def test_batches(self, device: torch.device | str = "cpu") -> list[Tensor]:
        """The fixed-binarized test images, ``[B, D]`` batches, as a training run sees them."""
        return [x.to(device) for x in self.datamodule.test_dataloader()]


def load_run(ckpt_path: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild model (with the checkpoint's weights) and datamodule from ``ckpt_path``."""
    checkpoint = load_checkpoint(ckpt_path)
    stored = checkpoint.get("iwae_config")
    if not isinstance(stored, dict):
        raise UserError(
            f"{ckpt_path} carries no run config (iwae_config); was it saved by train.py?"
        )
    config = OmegaConf.create(stored)
    datamodule = build(config.data)
    datamodule.prepare()
    datamodule.setup("test")
    model = build(config.model, input_dim=datamodule.input_dim)
    prefix = "model."
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    model.load_state_dict(state)
    return LoadedRun(model.to(device).eval(), datamodule, config, checkpoint)


def hydra_choice(ckpt_path: str | Path, group: str) -> str | None:
    """The config-group option (``model: two_layer``) of the run whose ``checkpoints/`` holds
    ``ckpt_path``, from its ``.hydra/hydra.yaml``; None when that file is not there."""
    hydra_yaml = Path(ckpt_path).resolve().parent.parent / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    choices = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {})
    return (choices.get("choices") or {}).get(group)


def eval_device(cfg: DictConfig) -> torch.device:
    """CUDA when the trainer config allows it and one is present, else the CPU."""
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def evaluate_checkpoint(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` with ``cfg.eval``; write ``metrics.json`` and ``samples.png``
    into ``output_dir``; return the metrics."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, "", "null", "last") or not Path(ckpt_path).is_file():
        raise UserError(f"mode=eval needs ckpt_path=<existing .ckpt file>, got {ckpt_path!r}")
    # float sums depend on the thread count: the run's own `threads` reproduces its test/nll
    set_torch_threads(cfg.get("threads"))
    device = eval_device(cfg)
    run = load_run(ckpt_path, device)
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
    metrics.update(test_metrics(run.model, run.test_batches(device), cfg.eval))
    output_dir.mkdir(parents=True, exist_ok=True)
    save_sample_grid(run.model, run.datamodule.image_shape, output_dir / "samples.png")
    write_json_atomic(output_dir / "metrics.json", metrics)
    print(format_results(metrics))
    return metrics
