"""The binarization study end to end, shrunk: two runs, then the train/test NLL table."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from iwae.reports.binarization import main as study_main
from iwae.run import train

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TINY = [
    "data.split=[100,40,60]",
    "schedule.epochs=1",
    "eval.k=8",
    "eval.chunk_size=8",
    "eval.val_k=2",
]


def run(tmp_path: Path, name: str, binarization: str) -> dict:
    overrides = ["experiment=binarization_study_digits", f"data.binarization={binarization}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *TINY])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    (tmp_path / name).mkdir()
    return train(cfg, tmp_path / name)


def test_study_table_has_both_binarizations_and_agrees_with_train(tmp_path, capsys):
    metrics = {b: run(tmp_path, str(i), b) for i, b in enumerate(["dynamic", "fixed"])}
    study_main([str(tmp_path), "--k", "8", "--train-images", "50", "--chunk-size", "8"])
    rows = json.loads((tmp_path / "binarization_study.json").read_text())["runs"]
    assert [r["binarization"] for r in rows] == ["dynamic", "fixed"]
    for row in rows:
        # Same model, data, k and seed as train.py's own test evaluation: the same number.
        assert abs(row["test/nll"] - metrics[row["binarization"]]["test/nll"]) < 1e-6
        assert row["train/nll"] > 0 and row["gap"] == row["test/nll"] - row["train/nll"]
    table = (tmp_path / "binarization_study.md").read_text()
    assert table.count("| mnist_subset |") == 2 and table in capsys.readouterr().out
