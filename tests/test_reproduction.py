"""The reproduction study's command (`iwae.reports.reproduction`): paired differences, CSV, and
the table in docs/reproduction.md."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from iwae.reports.reproduction import (
    CSV_NAME,
    evaluate_runs,
    last_point_table,
    load_points,
    paired_differences,
    read_csv,
)
from tests.helpers import ROOT

DOCS = ROOT / "docs" / "reproduction"


def _point(objective: str, seed: int, ll: list[float], step: int = 100) -> dict:
    return {
        "data": "d", "model": "1_layer", "k": 5, "objective": objective, "seed": seed,
        "step": step, "test_ll_per_image": ll,
    }  # fmt: skip


def test_paired_difference_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    vae = rng.normal(-100, 5, size=(3, 40))
    iwae = vae + rng.normal(1.0, 0.5, size=(3, 40))  # IWAE log-likelihood higher by ~1 nat
    points = [_point("vae", s, vae[s].tolist()) for s in range(3)]
    points += [_point("iwae", s, iwae[s].tolist()) for s in range(3)]
    points.append(_point("iwae", 7, iwae[0].tolist()))  # no VAE partner: left out
    (row,) = paired_differences(points)
    nll_diff = -(iwae - vae)  # per seed, per digit: NLL_iwae - NLL_vae
    per_digit = nll_diff.mean(0)
    assert row["seeds"] == 3
    assert row["diff"] == pytest.approx(per_digit.mean())
    assert row["se_digits"] == pytest.approx(per_digit.std(ddof=1) / math.sqrt(40))
    assert row["se_seeds"] == pytest.approx(nll_diff.mean(1).std(ddof=1) / math.sqrt(3))
    assert row["diff"] < 0


def test_snapshot_nll_agrees_with_mode_eval(tmp_path):
    """The study's per-digit estimate and `python train.py mode=eval` are two routes to the
    same k-sample test NLL (same model, digits, k and seed): they must agree."""
    run = tmp_path / "run"
    common = ["logger=none", "data.split=[200,50,50]", "trainer.enable_progress_bar=false"]
    train = [
        sys.executable, "train.py", "callbacks=snapshots", "callbacks.snapshots.every_n_epochs=1",
        "schedule.epochs=2", "eval.enabled=false", "eval.val_k=5", "threads=1",
        f"hydra.run.dir={run}", *common,
    ]  # fmt: skip
    subprocess.run(train, cwd=ROOT, check=True, capture_output=True, timeout=300)
    evaluate_runs([run], k=20, chunk_size=20, train_images=30)
    points = load_points(run)
    assert [p["step"] for p in points] == [10, 20]
    assert all(len(p["test_ll_per_image"]) == 50 for p in points)
    ckpt = sorted((run / "checkpoints" / "snapshots").glob("*.ckpt"))[-1]
    evaluation = [
        sys.executable, "train.py", "mode=eval", f"ckpt_path={ckpt}", "eval.k=20",
        "eval.chunk_size=20", "threads=1", f"hydra.run.dir={tmp_path / 'eval'}", *common,
    ]  # fmt: skip
    subprocess.run(evaluation, cwd=ROOT, check=True, capture_output=True, timeout=300)
    metrics = __import__("json").loads((tmp_path / "eval" / "metrics.json").read_text())
    assert points[-1]["test_nll"] == pytest.approx(metrics["test/nll"], rel=1e-6)
    assert points[-1]["active_units"] == metrics["test/active_units"]


def test_readme_rows_are_the_csv():
    """The study table of docs/reproduction.md is the one the committed CSV gives, row for row."""
    rows = read_csv(DOCS / CSV_NAME)
    table = last_point_table(rows)
    readme = (ROOT / "docs" / "reproduction.md").read_text()
    body = [line for line in table.splitlines() if re.match(r"\| \w", line)]
    assert len(body) >= 3, "the CSV gives no configurations"
    for line in table.splitlines():
        assert line in readme, f"docs/reproduction.md lacks the CSV's row: {line}"
