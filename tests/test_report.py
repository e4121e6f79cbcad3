"""Checkpoint evaluation and the report, on one tiny real training run plus synthetic runs:
``mode=eval`` reproduces the run's test NLL, and the table reproduces every metrics.json."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from iwae.eval_checkpoint import evaluate_checkpoint
from iwae.reports.table1 import find_runs, log_to_wandb, read_csv, report, table1_markdown
from iwae.run import train
from tests.conftest import compose_config

EVAL = ["eval.k=20", "eval.chunk_size=7", "eval.seed=3"]
TINY = [
    "logger=csv",
    "data.split=[200,50,40]",
    "schedule.epochs=1",
    "eval.val_k=5",
    "trainer.enable_progress_bar=false",
    *EVAL,
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny one-layer IWAE run, laid out as job 0 of a sweep (with .hydra/config.yaml)."""
    run_dir = tmp_path_factory.mktemp("sweep") / "0"
    cfg = compose_config(TINY, run_dir)
    metrics = train(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    return run_dir, metrics


def test_eval_mode_reproduces_the_training_runs_nll(trained, tmp_path):
    run_dir, train_metrics = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = ["mode=eval", f"ckpt_path={ckpt}", *EVAL, "eval.bound_ks=[1,20]"]
    cfg = compose_config(overrides, tmp_path)
    metrics = evaluate_checkpoint(cfg, tmp_path)
    assert metrics["test/nll"] == train_metrics["test/nll"]  # same weights, data, seed: exact
    # L_20 from the bound-vs-k pass draws the same stream as the NLL estimate: the same number
    assert metrics["test/bound_vs_k"][-1]["bound"] == pytest.approx(-metrics["test/nll"], abs=1e-9)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/nll", "eval/k", "test/active_units", "test/active_units_per_layer"):
        assert on_disk[key] == train_metrics[key]


def test_checkpoint_config_loads_weights_only(trained):
    ckpt = torch.load(trained[0] / "checkpoints" / "last.ckpt", weights_only=True)
    stored = ckpt["iwae_config"]
    assert isinstance(stored, dict) and stored["eval"]["k"] == 20
    json.dumps(stored)  # plain builtins only


def fake_run(root: Path, name: str, objective: str, k: int, nll: float, units: list[int]) -> dict:
    """A finished run as metrics.json alone (no config, no checkpoint)."""
    metrics = {
        "data": "digits",
        "binarization": "dynamic",
        "objective": objective,
        "k": k,
        "test/nll": nll,
        "test/nll_stderr": 1.0,
        "test/images": 40,
        "eval/k": 20,
        "test/active_units": sum(units),
        "test/active_units_per_layer": units,
    }
    (root / name).mkdir()
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_report_table_reproduces_every_metrics_json(trained, tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    shutil.copytree(trained[0], root / "0")
    fakes = {
        "1": fake_run(root, "1", "vae", 5, 101.23456, [7, 3]),
        "2": fake_run(root, "2", "iwae", 5, 99.5, [9, 4]),
        "3": fake_run(root, "3", "iwae", 50, 98.0, [10, 4]),
        "4": fake_run(root, "4", "iwae", 50, 97.0, [11, 5]),  # a second seed of one cell
    }
    paths = report(root, ks=[1, 4, 16], chunk_size=8)
    with open(root / "table1.csv") as f:
        rows = {r["run_dir"]: r for r in csv.DictReader(f)}
    for name, metrics in {"0": trained[1], **fakes}.items():
        assert float(rows[name]["test_nll"]) == metrics["test/nll"]
        assert int(rows[name]["k"]) == metrics["k"]
    table = (root / "table1.md").read_text()
    assert "| 2 | 5 | 101.23 (7+3) | 99.50 (9+4) |" in table
    assert "| 2 | 50 |  | 97.50 (10+4, 11+5) [n=2] |" in table
    nll, units = trained[1]["test/nll"], trained[1]["test/active_units_per_layer"][0]
    assert f"| 1 | {trained[1]['k']} |  | {nll:.2f} ({units}) |" in table
    for name in ("nll_vs_k", "learning_curves", "unit_variances", "bound_vs_k"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
    curve = json.loads((root / "0" / "bound_vs_k.json").read_text())["curve"]
    assert [row["k"] for row in curve] == [1, 4, 16]  # the best run with a checkpoint


def test_report_logs_to_wandb_only_when_runs_used_it(trained, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs = find_runs(trained[0])
    assert not log_to_wandb(runs, trained[0], [], {})
    runs[0].config["logger"] = {"wandb": {"project": "iwae-test", "offline": True}}
    assert log_to_wandb(runs, trained[0], [], {})


DOCS = Path(__file__).resolve().parent.parent / "docs" / "table1_small"


@pytest.mark.skipif(not (DOCS / "table1.csv").is_file(), reason="no committed small-scale run")
def test_committed_table_is_generated_from_its_csv_and_copied_into_the_readme():
    """The README's Table 1 numbers come from the committed report files, not from a keyboard."""
    table = (DOCS / "table1.md").read_text()
    assert table1_markdown(read_csv(DOCS / "table1.csv")) == table
    readme = (DOCS.parent.parent / "README.md").read_text()
    section = readme.split("## Results: Table 1 at small scale", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows and all(row in section.splitlines() for row in rows)
