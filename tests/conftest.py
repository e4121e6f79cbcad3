"""Shared fixtures: compose the real Hydra configs, shrunk for CPU tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from iwae.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"

# W&B costs nothing when disabled; tests that check the W&B logger set the mode themselves.
os.environ.setdefault("WANDB_MODE", "disabled")


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The project's config with ``overrides``, writing to ``output_dir`` (no Hydra run)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that make a run finish in seconds on a CPU."""
    return [
        "logger=none",
        "data.split=[200,50,50]",
        "schedule.epochs=1",
        "eval.k=20",
        "eval.val_k=5",
        "trainer.enable_progress_bar=false",
    ]
