"""The finished runs under a directory, as the report tools read them: each run's
``metrics.json`` and resolved Hydra config, one CSV row per run (``table1.csv``), and which runs
are "best" (by validation bound, keeping the test set out of the choice)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from iwae.evaluation import format_units
from iwae.reports.files import read_json, regular_file_inside
from iwae.training.outputs import write_text_atomic

OBJECTIVE_ORDER = ("vae", "iwae")  # the paper's columns first; any others after them
CSV_FIELDS = (
    "data",
    "binarization",
    "layers",
    "objective",
    "k",
    "test_nll",
    "test_nll_stderr",
    "active_units",
    "active_units_per_layer",
    "eval_k",
    "test_images",
    "train_steps",
    "val_bound",
    "seed",
    "run_dir",
)


MLP = "iwae.model.IWAEModel"


@dataclass
class Run:
    """One finished run: its directory, ``metrics.json`` and resolved Hydra config."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None  # the folder the report was given: files are read only inside it

    @property
    def layers(self) -> int:
        """Stochastic layers: from the model config, else from the per-layer unit counts."""
        dims = (self.config.get("model") or {}).get("latent_dims")
        return len(dims) if dims else len(self.metrics.get("test/active_units_per_layer", [0]))

    @property
    def architecture(self) -> str:
        """The network, when it is not the paper's MLP (`MLP`): its model config choice
        (``conv``), else its class name (a plug-in's); "" for the MLP, whose rows are the
        paper's one- and two-layer rows."""
        target = (self.config.get("model") or {}).get("_target_")
        if target in (None, MLP):
            return ""
        choice = self.metrics.get("model")
        if choice and choice not in ("custom", "one_layer", "two_layer"):
            return str(choice)
        return str(target).rsplit(".", 1)[-1]

    @property
    def key(self) -> tuple[str, int, str, int]:
        """(dataset, stochastic layers, objective, k): a cell of Table 1."""
        m = self.metrics
        return m.get("data", "?"), self.layers, m.get("objective", "?"), int(m.get("k") or 0)

    @property
    def label(self) -> str:
        return f"{self.key[2].upper()} k={self.key[3]}"

    def checkpoint(self) -> Path | None:
        return self.file("checkpoints", "last.ckpt")

    def file(self, *parts: str) -> Path | None:
        """``path / parts`` if it is a regular file inside the report's folder, else None."""
        path = self.path.joinpath(*parts)
        return path if regular_file_inside(path, self.root or self.path) else None


def find_runs(root: str | Path) -> list[Run]:
    """Every run under ``root`` (or ``root`` itself) that wrote a ``metrics.json`` with a test
    NLL, in sweep order (job number, then path)."""
    runs, root = [], Path(root)
    for path in root.rglob("metrics.json"):
        if not regular_file_inside(path, root):
            continue
        metrics = read_json(path)
        if not isinstance(metrics, dict) or "test/nll" not in metrics:
            continue  # a run that was stopped before its evaluation
        hydra_cfg = path.parent / ".hydra" / "config.yaml"
        config = (
            yaml.safe_load(hydra_cfg.read_text()) if regular_file_inside(hydra_cfg, root) else {}
        )
        runs.append(Run(path.parent, metrics, config or {}, root))

    def order(run: Run) -> tuple:
        name = run.path.name
        return (str(run.path.parent), int(name) if name.isdigit() else math.inf, name)

    return sorted(runs, key=order)


def csv_rows(runs: list[Run], root: Path) -> list[dict[str, Any]]:
    """One row per run with the numbers the table shows and the run directory they came from."""
    rows = []
    for run in runs:
        m = run.metrics
        data, layers, objective, k = run.key
        rows.append(
            {
                "data": data,
                "binarization": m.get("binarization", ""),
                "layers": layers,
                "objective": objective,
                "k": k,
                "test_nll": m["test/nll"],
                "test_nll_stderr": m.get("test/nll_stderr"),
                "active_units": m.get("test/active_units"),
                "active_units_per_layer": format_units(m.get("test/active_units_per_layer", [])),
                "eval_k": m.get("eval/k"),
                "test_images": m.get("test/images"),
                "train_steps": m.get("train/steps"),
                "val_bound": m.get("val/bound"),
                "seed": m.get("seed"),
                "run_dir": str(run.path.relative_to(root)) if run.path != root else ".",
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path, fields: tuple[str, ...] = CSV_FIELDS) -> Path:
    """``table1.csv``, written as metrics.json is (a link at ``path`` is replaced)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``table1.csv``, numbers as numbers: ``table1_markdown(read_csv(p))``
    redraws the table from the CSV alone."""
    numeric = {"layers": int, "k": int, "test_nll": float, "test_nll_stderr": float}
    numeric |= {"eval_k": int, "test_images": int}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for name, kind in numeric.items():
            row[name] = kind(row[name]) if row[name] not in ("", None) else None
    return rows


def objective_columns(rows: list[dict[str, Any]]) -> list[str]:
    found = {r["objective"] for r in rows}
    return [o for o in OBJECTIVE_ORDER if o in found] + sorted(found - set(OBJECTIVE_ORDER))


def panel(run: Run) -> str:
    data, layers, _, _ = run.key
    net = f"{run.architecture}, " if run.architecture else ""
    return f"{data}, {net}{layers} layer{'s' * (layers > 1)}"


def section_title(data: str, binarization: str) -> str:
    return f"{data}, {binarization}" if binarization else data


def selection_basis(runs: list[Run]) -> str:
    """How the figures pick "best" models: ``val`` (highest validation bound, which keeps the
    test set out of the choice) when any run logged ``val/bound``, else ``test`` (lowest NLL)."""
    return "val" if any(r.metrics.get("val/bound") is not None for r in runs) else "test"


def _score(run: Run, basis: str) -> float:
    """Higher is better: the validation bound, or minus the test NLL."""
    if basis == "test":
        return -run.metrics["test/nll"]
    value = run.metrics.get("val/bound")
    return -math.inf if value is None else value


def best_runs(runs: list[Run], basis: str | None = None) -> list[Run]:
    """Per (dataset, network, layers, objective) the best run by ``basis`` (`selection_basis` when
    None): the models of the sample grids."""
    basis = basis or selection_basis(runs)
    best: dict[tuple, Run] = {}
    for run in runs:
        cell = (run.key[0], run.architecture, *run.key[1:3])  # a conv run is no MLP's rival
        if cell not in best or _score(run, basis) > _score(best[cell], basis):
            best[cell] = run
    return [best[c] for c in sorted(best, key=lambda c: (*c[:3], objectives_rank(c[3])))]


def best_run(runs: list[Run], basis: str | None = None) -> Run:
    """The one model of the bound-vs-k figure: the best of all runs by ``basis``."""
    basis = basis or selection_basis(runs)
    return max(runs, key=lambda r: _score(r, basis))


def objectives_rank(objective: str) -> tuple[int, str]:
    rank = (
        OBJECTIVE_ORDER.index(objective) if objective in OBJECTIVE_ORDER else len(OBJECTIVE_ORDER)
    )
    return rank, objective
