"""``trainer=ddp_cpu``: two gloo processes train one run; rank 0 alone writes its outputs.

DDP runs as a subprocess (``python train.py trainer=ddp_cpu``): inside pytest Lightning would
start rank 1 by re-running the pytest command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.base import MinibatchIterable
from iwae import evaluation  # not `import test_metrics`: pytest would collect it
from iwae.errors import UserError
from iwae.launch.assembly import load_run
from iwae.launch.config_check import check_ddp_launch
from iwae.launch.run import train
from tests.helpers import TINY, compose_config, run_train, wandb_config_item, wandb_run_files

# Two epochs; binarization fixed so both runs see the same training images.
SHARED = [*TINY, "schedule.epochs=2", "data.binarization=fixed"]


def test_ddp_cpu_matches_single_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    # 2 processes x 10 images = the single process's batch of 20: the same steps per epoch.
    ddp_args = ["trainer=ddp_cpu", "data.batch_size=10", "threads=1", *SHARED]
    run_train([*ddp_args, f"hydra.run.dir={run_dir}"], tmp_path, timeout=300)

    ddp = json.loads((run_dir / "metrics.json").read_text())
    single_dir = tmp_path / "single"
    single = train(compose_config(["logger=none", *SHARED], single_dir), single_dir)
    assert ddp["train/steps"] == single["train/steps"] == 20

    # One set of outputs, from rank 0: one W&B run, nothing written beside the run directory.
    (run_file,) = wandb_run_files(run_dir)  # and its config, from rank 0's module
    assert wandb_config_item("objective", f'"{ddp["objective"]}"') in run_file.read_bytes()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()

    # Rank 0's final evaluation is a single-process evaluation of the checkpoint it saved.
    loaded = load_run(run_dir / "checkpoints" / "last.ckpt")
    again = evaluation.test_metrics(loaded.model, loaded.test_batches(), loaded.config.eval)
    assert again["test/nll"] == pytest.approx(ddp["test/nll"], abs=1e-3)

    # Same data, same effective batch; only the noise differs (each rank draws its own).
    assert ddp["test/nll"] == pytest.approx(single["test/nll"], abs=2.0)


def test_ddp_refused_in_a_local_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local multirun of a re-launching strategy would run the whole sweep again per rank."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    trainer = OmegaConf.create({"strategy": "ddp", "devices": 2, "num_nodes": 1})
    for var in ("SLURM_PROCID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    fake = OmegaConf.create({"mode": RunMode.MULTIRUN})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: fake))
    with pytest.raises(UserError, match="hydra/launcher=slurm"):
        check_ddp_launch(trainer)
    monkeypatch.setenv("SLURM_PROCID", "0")  # srun started the ranks: nothing is re-run
    check_ddp_launch(trainer)


def test_every_rank_gets_as_many_batches() -> None:
    """201 images on 2 ranks: both draw 11 batches (a rank with one more would hang DDP), and
    together they cover every image, one of them twice."""
    data = torch.arange(201.0).unsqueeze(1)
    ranks = [MinibatchIterable(data, 10, True, False, seed=0, rank=r, world_size=2) for r in (0, 1)]
    batches = [list(r) for r in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 11
    seen = torch.cat([torch.cat(b) for b in batches]).flatten()
    assert len(seen) == 202 and set(seen.tolist()) == set(range(201))
    # One process: every image once, as before.
    single = list(MinibatchIterable(data, 10, True, False, seed=0))
    assert sorted(torch.cat(single).flatten().tolist()) == list(range(201))
