"""The data behind the report's figures: NLL against k (with the paper's numbers), learning
curves from the CSV logs, and the figures that load the trained models (unit variances, data /
reconstructions / samples, the bound against k of the best model)."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iwae.contract import optional_missing
from iwae.conv import ConvModel
from iwae.evaluation import active_units, bound_vs_k, format_units
from iwae.model import IWAEModel
from iwae.reports import figures, paper
from iwae.reports.files import read_json
from iwae.reports.runs import Run, best_run, best_runs, panel, section_title, selection_basis
from iwae.training.outputs import drawable_shape, write_json_atomic

Curves = dict[str, dict[tuple[str, int], dict[int, Any]]]


def nll_curves(rows: list[dict[str, Any]]) -> Curves:
    """``{dataset: {(objective, layers): {k: (mean test NLL, standard error)}}}`` for
    `figures.nll_vs_k`: the error is the run's own over test images, or over the seeds of a
    cell with several runs (as in the table)."""
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        title = section_title(r["data"], r["binarization"] or "")
        line = r["objective"] + (f", {r['architecture']}" if r.get("architecture") else "")
        cells[title][(line, r["layers"])][r["k"]].append(r)
    return {
        title: {
            line: {k: _mean_stderr(runs) for k, runs in points.items()}
            for line, points in lines.items()
        }
        for title, lines in cells.items()
    }


def _mean_stderr(rows: list[dict[str, Any]]) -> tuple[float, float | None]:
    nlls = [r["test_nll"] for r in rows]
    if len(nlls) > 1:
        return sum(nlls) / len(nlls), statistics.stdev(nlls) / math.sqrt(len(nlls))
    stderr = rows[0].get("test_nll_stderr")
    return nlls[0], float(stderr) if stderr not in (None, "") else None


def paper_curves(rows: list[dict[str, Any]]) -> Curves:
    """The paper's NLLs at the (dataset, layers, objective, k) the rows trained, in the shape
    of `nll_curves` without errors; empty for data the paper did not use."""
    curves: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("architecture"):  # the paper trained MLPs only
            continue
        data, binarization = r["data"], r["binarization"] or ""
        value = paper.paper_value(data, binarization, r["layers"], r["objective"], r["k"])
        if value is not None:
            curves[section_title(data, binarization)][(r["objective"], r["layers"])][r["k"]] = (
                value[0]
            )
    return {title: dict(lines) for title, lines in curves.items()}


def learning_curve_data(runs: list[Run]) -> dict[str, dict[str, tuple[list, list]]]:
    """Validation bound by step from each run's CSVLogger file (``**/metrics.csv``)."""
    panels: dict = defaultdict(dict)
    for run in runs:
        logs = sorted(
            p for p in run.path.rglob("metrics.csv") if run.file(p.relative_to(run.path).as_posix())
        )
        if not logs:
            continue
        with open(logs[0]) as f:
            points = [r for r in csv.DictReader(f) if r.get("val/bound")]
        if points:
            steps = [int(r["step"]) + 1 for r in points]
            panels[panel(run)][run.label] = (steps, [float(r["val/bound"]) for r in points])
    return dict(panels)


@torch.no_grad()
def sample_grid(
    model, x: torch.Tensor, image_shape: tuple[int, ...], n: int = 8
) -> tuple[torch.Tensor, str] | None:
    """``[4n, 1, H, W]`` and what its rows hold: n test images, their reconstructions
    (Bernoulli means of x at the mean of q(h1 | x)), then 2n samples from the model. A network
    of one's own draws only what its contract offers (`iwae.contract`: no decoder to call, so no
    reconstructions; no ``sample``, no samples). None for images that cannot be drawn (flat rows
    of a length that is not square, and no ``data.image_shape``) or with nothing to draw."""
    shape = drawable_shape(image_shape)
    if shape is None:
        return None
    x = x[:n]
    parts, names = [x], ["data"]
    if isinstance(model, IWAEModel | ConvModel):  # encoder[0] and decoder[0]: the first layer
        mean, _ = model.encoder[0](x)
        parts.append(torch.sigmoid(model.decoder[0](mean)))
        names.append("reconstructions")
    if optional_missing(model) is None:
        parts.append(model.sample(2 * n, generator=torch.Generator(device=x.device).manual_seed(0)))
        names.append("samples")
    if len(parts) == 1:
        return None
    return torch.cat(parts).view(-1, 1, *shape).cpu(), " / ".join(names)


def bound_curve(
    run: Run, ks: list[int], chunk_size: int, seed: int, loaded: Any = None
) -> tuple[list[dict[str, float]], dict[str, Any] | None]:
    """L_k against k for ``run``: from its metrics when evaluated with eval.bound_ks, else
    from the ``bound_vs_k.json`` cache beside it, else computed from its checkpoint (or the
    already ``loaded`` run). Returns the curve and, when computed, what `write_bound_cache`
    writes once every run has been read."""
    if run.metrics.get("test/bound_vs_k"):
        return run.metrics["test/bound_vs_k"], None
    cache = run.path / "bound_vs_k.json"
    if run.file(cache.name):
        saved = read_json(cache)
        if saved.get("ks") == ks and saved.get("seed") == seed:
            return saved["curve"], None
    from iwae.launch.assembly import load_run
    from iwae.launch.device import default_device

    loaded = loaded or load_run(run.checkpoint(), default_device())
    curve = bound_vs_k(loaded.model, loaded.test_batches(), ks, chunk_size, seed)
    return curve, {"ks": ks, "seed": seed, "chunk_size": chunk_size, "curve": curve}


def write_bound_cache(run: Run, cache: dict[str, Any] | None) -> None:
    """Keep a computed bound-vs-k curve beside its run (``bound_vs_k.json``)."""
    if cache is not None:
        write_json_atomic(run.path / "bound_vs_k.json", cache)


def _unit_variances(run: Run, loaded: Any, test: list, panels: dict) -> None:
    """Add ``run``'s sorted unit variances, one panel per stochastic layer, to ``panels``."""
    per_layer = run.metrics.get("test/unit_variances")
    if per_layer is None:  # runs evaluated before unit variances were written
        threshold = (run.config.get("eval") or {}).get("active_threshold", 0.01)
        per_layer = [v.tolist() for v in active_units(loaded.model, test, threshold)[1]]
    units = format_units(run.metrics.get("test/active_units_per_layer", []))
    for layer, values in enumerate(per_layer, 1):
        panels[f"{panel(run)}: h{layer}"][f"{run.label} ({units})"] = values


BASIS_WORDS = {"val": "best validation bound", "test": "lowest test NLL (no run logged val/bound)"}


@dataclass
class ModelFigures:
    """What the figures of the trained models show, read from every checkpoint before any
    file is written (a refused checkpoint leaves the folder as it was)."""

    variances: dict
    grids: dict
    curve: list
    title: str
    best: Run
    cache: dict[str, Any] | None


def checkpoint_data(
    runs: list[Run], root: Path, ks: list[int], chunk_size: int, seed: int
) -> ModelFigures | None:
    """Load every run's last checkpoint: unit variances, data / reconstructions / samples,
    bound vs k (of the best model by validation bound, `selection_basis`); None if no run
    kept a checkpoint."""
    from iwae.launch.assembly import load_run
    from iwae.launch.device import default_device

    runs = [r for r in runs if r.checkpoint() is not None]
    if not runs:
        return None
    basis = selection_basis(runs)
    chosen, best = best_runs(runs, basis), best_run(runs, basis)
    if basis == "test":
        print(
            "bound_vs_k.png, samples_reconstructions.png: no run logged val/bound, so the best "
            "model is the one with the lowest test NLL"
        )
    variances: dict = defaultdict(dict)
    grids, curve, cache = {}, [], None
    for run in runs:
        loaded = load_run(run.checkpoint(), default_device())  # k=5000 curves: on the GPU
        test = loaded.test_batches()
        _unit_variances(run, loaded, test, variances)
        if run in chosen:
            drawn = sample_grid(loaded.model, test[0], loaded.datamodule.image_shape)
            if drawn is not None:
                grids[f"{run.label}, {panel(run)}: {drawn[1]}"] = drawn[0]
        if run is best:
            curve, cache = bound_curve(best, ks, chunk_size, seed, loaded)
    title = (
        f"{best.label}, {panel(best)} ({best.path.relative_to(root.parent)}),\n"
        f"the model with the {BASIS_WORDS[basis]}"
    )
    return ModelFigures(variances, grids, curve, title, best, cache)


def checkpoint_figures(data: ModelFigures, root: Path) -> dict[str, Callable[[], Path]]:
    """The drawing of each figure of `checkpoint_data`, by name (drawn after the tables)."""
    return {
        "unit_variances": lambda: figures.unit_variances(
            data.variances, root / "unit_variances.png"
        ),
        "samples_reconstructions": lambda: figures.image_grids(
            data.grids, root / "samples_reconstructions.png"
        ),
        "bound_vs_k": lambda: figures.bound_vs_k(data.curve, root / "bound_vs_k.png", data.title),
    }
