"""The binarization study end to end, shrunk: two runs, then the train/test NLL table."""

from __future__ import annotations

import json
from pathlib import Path

from iwae.launch.run import train
from iwae.reports.binarization import main as study_main
from tests.helpers import compose_config

# The study shrunk: 100 training digits, one epoch, a small evaluation.
SHRUNK = [
    "data.split=[100,40,60]",
    "schedule.epochs=1",
    "eval.k=8",
    "eval.chunk_size=8",
    "eval.val_k=2",
]


def run(tmp_path: Path, name: str, binarization: str) -> dict:
    overrides = ["experiment=binarization_study_digits", f"data.binarization={binarization}"]
    cfg = compose_config([*overrides, *SHRUNK], tmp_path / name)
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
