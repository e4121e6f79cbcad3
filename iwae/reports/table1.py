"""Table 1 and figures from finished runs: ``python -m iwae.reports.table1 <run or multirun dir>``.

Collects every ``metrics.json`` under the directory (with the run's ``.hydra/config.yaml``)
and writes, into that directory:

- ``table1.md``: the paper's Table 1 layout, per dataset and binarization: stochastic layers x
  k rows, one column per objective, cells "test NLL ± standard error (active units)", and the
  paper's published numbers beside for its own datasets (`iwae.reports.paper`);
- ``table1.csv``: one row per run, every number the table shows and where it came from;
- ``nll_vs_k.png``, ``learning_curves.png`` (from each run's CSV log), and, from the runs'
  last checkpoints, ``bound_vs_k.png`` (the model with the best validation bound),
  ``unit_variances.png`` and ``samples_reconstructions.png``; a figure that cannot be drawn
  gets one printed line saying why;
- ``report.html``: all of the above in one self-contained page (`iwae.reports.html`).

Every number is read from the runs' files: nothing is typed in by hand. When the runs logged
to W&B, the table and figures go to a W&B run of their own (job type ``report``) in the
runs' group.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from iwae import figures
from iwae.evaluation import BOUND_KS, active_units, bound_vs_k, format_units
from iwae.outputs import write_json_atomic
from iwae.reports import html, paper
from iwae.resolvers import sweep_name

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


@dataclass
class Run:
    """One finished run: its directory, ``metrics.json`` and resolved Hydra config."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> int:
        """Stochastic layers: from the model config, else from the per-layer unit counts."""
        dims = (self.config.get("model") or {}).get("latent_dims")
        return len(dims) if dims else len(self.metrics.get("test/active_units_per_layer", [0]))

    @property
    def key(self) -> tuple[str, int, str, int]:
        """(dataset, stochastic layers, objective, k): a cell of Table 1."""
        m = self.metrics
        return m.get("data", "?"), self.layers, m.get("objective", "?"), int(m.get("k") or 0)

    @property
    def label(self) -> str:
        return f"{self.key[2].upper()} k={self.key[3]}"

    def checkpoint(self) -> Path | None:
        path = self.path / "checkpoints" / "last.ckpt"
        return path if path.is_file() else None


def find_runs(root: str | Path) -> list[Run]:
    """Every run under ``root`` (or ``root`` itself) that wrote a ``metrics.json`` with a test
    NLL, in sweep order (job number, then path)."""
    runs = []
    for path in Path(root).rglob("metrics.json"):
        metrics = json.loads(path.read_text())
        if "test/nll" not in metrics:
            continue  # a run that was stopped before its evaluation
        hydra_cfg = path.parent / ".hydra" / "config.yaml"
        config = yaml.safe_load(hydra_cfg.read_text()) if hydra_cfg.is_file() else {}
        runs.append(Run(path.parent, metrics, config or {}))

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


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
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


def _objectives(rows: list[dict[str, Any]]) -> list[str]:
    found = {r["objective"] for r in rows}
    return [o for o in OBJECTIVE_ORDER if o in found] + sorted(found - set(OBJECTIVE_ORDER))


def _cell(rows: list[dict[str, Any]]) -> str:
    """ "NLL ± stderr (units)"; several seeds of one cell: their mean NLL ± the standard error
    over the seeds, units of each, and n."""
    if not rows:
        return ""
    nlls = [r["test_nll"] for r in rows]
    nll = sum(nlls) / len(nlls)
    if len(rows) > 1:
        stderr = statistics.stdev(nlls) / math.sqrt(len(nlls))
    else:
        stderr = rows[0].get("test_nll_stderr")
    spread = f" ± {float(stderr):.2f}" if stderr not in (None, "") else ""
    units = ", ".join(r["active_units_per_layer"] for r in rows)
    return f"{nll:.2f}{spread} ({units})" + (f" [n={len(rows)}]" if len(rows) > 1 else "")


def _paper_cell(value: tuple[float, str] | None) -> str:
    if value is None:
        return ""
    nll, units = value
    return f"{nll:.2f}" + (f" ({units})" if units else "")


def _sections(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (dataset, binarization) pairs of the rows: one table, one figure panel each."""
    return sorted({(r["data"], r["binarization"] or "") for r in rows})


def _paper_objectives(rows: list[dict[str, Any]], data: str, binarization: str) -> list[str]:
    """The objectives of this section for which the paper published a number of some row."""
    return [
        o
        for o in _objectives(rows)
        if any(
            paper.paper_value(data, binarization, r["layers"], o, r["k"])
            for r in rows
            if (r["data"], r["binarization"] or "") == (data, binarization)
        )
    ]


def table1_markdown(rows: list[dict[str, Any]]) -> str:
    """The paper's Table 1 layout from the CSV rows: per dataset and binarization, rows
    (layers, k), one column per objective, cells "test NLL ± standard error (active units)",
    and the paper's numbers beside where the data is one the paper used."""
    cells: dict[tuple, list] = defaultdict(list)
    for r in rows:
        cells[(r["data"], r["binarization"] or "", r["layers"], r["k"], r["objective"])].append(r)
    objectives = _objectives(rows)
    eval_ks = sorted({r["eval_k"] for r in rows})
    images = sorted({r["test_images"] for r in rows})
    two_layers = any(r["layers"] > 1 for r in rows)
    lines = [
        f"Test NLL in nats (importance-sampled, k = {', '.join(map(str, eval_ks))}, "
        f"on {', '.join(map(str, images))} test images) ± one standard error over the test "
        "images (over the seeds where a cell has n > 1 runs); active units in brackets"
        + (", first layer + second layer in two-layer rows." if two_layers else ".")
    ]
    for data, binarization in _sections(rows):
        published = _paper_objectives(rows, data, binarization)
        lines += ["", f"**{data}**" + (f", {binarization} binarization" if binarization else "")]
        lines.append("")
        header = [o.upper() for o in objectives] + [f"{o.upper()} (paper)" for o in published]
        lines.append("| layers | k | " + " | ".join(header) + " |")
        lines.append("|---|---|" + "---|" * len(header))
        section = {
            (r["layers"], r["k"])
            for r in rows
            if (r["data"], r["binarization"] or "") == (data, binarization)
        }
        for layers, k in sorted(section):
            row = [_cell(cells[(data, binarization, layers, k, o)]) for o in objectives]
            row += [
                _paper_cell(paper.paper_value(data, binarization, layers, o, k)) for o in published
            ]
            lines.append(f"| {layers} | {k} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _panel(run: Run) -> str:
    data, layers, _, _ = run.key
    return f"{data}, {layers} layer{'s' * (layers > 1)}"


def _title(data: str, binarization: str) -> str:
    return f"{data}, {binarization}" if binarization else data


Curves = dict[str, dict[tuple[str, int], dict[int, Any]]]


def nll_curves(rows: list[dict[str, Any]]) -> Curves:
    """``{dataset: {(objective, layers): {k: (mean test NLL, standard error)}}}`` for
    `figures.nll_vs_k`: the error is the run's own over test images, or over the seeds of a
    cell with several runs (as in the table)."""
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        title = _title(r["data"], r["binarization"] or "")
        cells[title][(r["objective"], r["layers"])][r["k"]].append(r)
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
        data, binarization = r["data"], r["binarization"] or ""
        value = paper.paper_value(data, binarization, r["layers"], r["objective"], r["k"])
        if value is not None:
            curves[_title(data, binarization)][(r["objective"], r["layers"])][r["k"]] = value[0]
    return {title: dict(lines) for title, lines in curves.items()}


def learning_curve_data(runs: list[Run]) -> dict[str, dict[str, tuple[list, list]]]:
    """Validation bound by step from each run's CSVLogger file (``**/metrics.csv``)."""
    panels: dict = defaultdict(dict)
    for run in runs:
        logs = sorted(run.path.rglob("metrics.csv"))
        if not logs:
            continue
        with open(logs[0]) as f:
            points = [r for r in csv.DictReader(f) if r.get("val/bound")]
        if points:
            steps = [int(r["step"]) + 1 for r in points]
            panels[_panel(run)][run.label] = (steps, [float(r["val/bound"]) for r in points])
    return dict(panels)


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
    """Per (dataset, layers, objective) the best run by ``basis`` (`selection_basis` when
    None): the models of the sample grids."""
    basis = basis or selection_basis(runs)
    best: dict[tuple, Run] = {}
    for run in runs:
        cell = run.key[:3]
        if cell not in best or _score(run, basis) > _score(best[cell], basis):
            best[cell] = run
    return [best[c] for c in sorted(best, key=lambda c: (c[0], c[1], _objectives_rank(c[2])))]


def best_run(runs: list[Run], basis: str | None = None) -> Run:
    """The one model of the bound-vs-k figure: the best of all runs by ``basis``."""
    basis = basis or selection_basis(runs)
    return max(runs, key=lambda r: _score(r, basis))


def _objectives_rank(objective: str) -> tuple[int, str]:
    rank = (
        OBJECTIVE_ORDER.index(objective) if objective in OBJECTIVE_ORDER else len(OBJECTIVE_ORDER)
    )
    return rank, objective


@torch.no_grad()
def sample_grid(model, x: torch.Tensor, image_shape: tuple[int, ...], n: int = 8) -> torch.Tensor:
    """``[4n, 1, H, W]``: n test images, their reconstructions (Bernoulli means of x at the
    mean of q(h1 | x)), then 2n samples from the model."""
    x = x[:n]
    mean, _ = model.encoder[0](x)
    recon = torch.sigmoid(model.decoder[0](mean))
    samples = model.sample(2 * n, generator=torch.Generator(device=x.device).manual_seed(0))
    return torch.cat([x, recon, samples]).view(-1, 1, *image_shape[-2:]).cpu()


def bound_curve(
    run: Run, ks: list[int], chunk_size: int, seed: int, loaded: Any = None
) -> list[dict[str, float]]:
    """L_k against k for ``run``: from its metrics when evaluated with eval.bound_ks, else
    computed from its checkpoint (or the already ``loaded`` run) and cached in
    ``bound_vs_k.json`` beside it."""
    if run.metrics.get("test/bound_vs_k"):
        return run.metrics["test/bound_vs_k"]
    cache = run.path / "bound_vs_k.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("ks") == ks and saved.get("seed") == seed:
            return saved["curve"]
    from iwae.assembly import load_run
    from iwae.device import default_device

    loaded = loaded or load_run(run.checkpoint(), default_device())
    curve = bound_vs_k(loaded.model, loaded.test_batches(), ks, chunk_size, seed)
    write_json_atomic(cache, {"ks": ks, "seed": seed, "chunk_size": chunk_size, "curve": curve})
    return curve


def _unit_variances(run: Run, loaded: Any, test: list, panels: dict) -> None:
    """Add ``run``'s sorted unit variances, one panel per stochastic layer, to ``panels``."""
    per_layer = run.metrics.get("test/unit_variances")
    if per_layer is None:  # runs evaluated before unit variances were written
        threshold = (run.config.get("eval") or {}).get("active_threshold", 0.01)
        per_layer = [v.tolist() for v in active_units(loaded.model, test, threshold)[1]]
    units = format_units(run.metrics.get("test/active_units_per_layer", []))
    for layer, values in enumerate(per_layer, 1):
        panels[f"{_panel(run)}: h{layer}"][f"{run.label} ({units})"] = values


BASIS_WORDS = {"val": "best validation bound", "test": "lowest test NLL (no run logged val/bound)"}


def checkpoint_figures(
    runs: list[Run], root: Path, ks: list[int], chunk_size: int, seed: int
) -> dict[str, Path]:
    """Figures that need the trained models: unit variances, samples, bound vs k (of the
    best model by validation bound, `selection_basis`)."""
    from iwae.assembly import load_run
    from iwae.device import default_device

    runs = [r for r in runs if r.checkpoint() is not None]
    if not runs:
        return {}
    basis = selection_basis(runs)
    chosen, best = best_runs(runs, basis), best_run(runs, basis)
    if basis == "test":
        print(
            "bound_vs_k.png, samples_reconstructions.png: no run logged val/bound, so the best "
            "model is the one with the lowest test NLL"
        )
    variances: dict = defaultdict(dict)
    grids, curve = {}, []
    for run in runs:
        loaded = load_run(run.checkpoint(), default_device())  # k=5000 curves: on the GPU
        test = loaded.test_batches()
        _unit_variances(run, loaded, test, variances)
        if run in chosen:
            title = f"{run.label}, {_panel(run)}: data / reconstructions / samples"
            grids[title] = sample_grid(loaded.model, test[0], loaded.datamodule.image_shape)
        if run is best:
            curve = bound_curve(best, ks, chunk_size, seed, loaded)
    title = (
        f"{best.label}, {_panel(best)} ({best.path.relative_to(root.parent)}),\n"
        f"the model with the {BASIS_WORDS[basis]}"
    )
    return {
        "unit_variances": figures.unit_variances(variances, root / "unit_variances.png"),
        "samples_reconstructions": figures.image_grids(grids, root / "samples_reconstructions.png"),
        "bound_vs_k": figures.bound_vs_k(curve, root / "bound_vs_k.png", title),
    }


def wandb_group(runs: list[Run], root: Path) -> str:
    """The runs' W&B group, so that the report sits beside them: the group their resolved
    config names, else the sweep's name from its directory, as `iwae.resolvers.sweep_group`
    derives it when the config was saved unresolved (Hydra's own ``.hydra/config.yaml``)."""
    for run in runs:
        group = ((run.config.get("logger") or {}).get("wandb") or {}).get("group")
        if isinstance(group, str) and group and "${" not in group:
            return group
    return sweep_name(root)


def log_to_wandb(runs: list[Run], root: Path, rows: list[dict], paths: dict[str, Path]) -> bool:
    """Log the table and figures to a W&B run of their own, in the runs' group, when the runs
    used W&B."""
    loggers = [r.config.get("logger") or {} for r in runs]
    cfg = next((lg["wandb"] for lg in loggers if lg.get("wandb")), None)
    if cfg is None:
        return False
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(
        project=cfg.get("project", "iwae"),
        save_dir=str(root),
        offline=bool(cfg.get("offline", False)),
        name=f"report-{root.name}",
        group=wandb_group(runs, root),
        job_type="report",
    )
    for name, path in paths.items():
        logger.log_image(key=f"report/{name}", images=[str(path)])
    logger.log_table(
        key="report/table1",
        columns=list(CSV_FIELDS),
        data=[[r[c] for c in CSV_FIELDS] for r in rows],
    )
    logger.experiment.finish()
    return True


NO_CSV_LOG = "not drawn: no run has a CSV log (logger=csv or 'logger=[csv,wandb]')"
NO_CHECKPOINT = "not drawn: no run has checkpoints/last.ckpt"


def report(
    root: str | Path,
    ks: list[int] | None = None,
    chunk_size: int = 500,
    seed: int = 0,
    checkpoints: bool = True,
) -> dict[str, Path]:
    """Write ``table1.md``, ``table1.csv``, the figures and ``report.html`` into ``root``;
    return their paths. Print one line for each figure not drawn, saying why.

    ``ks``: the k of the bound-vs-k figure (default 1, 5, 50, 500, 5000); ``checkpoints=False``
    draws only what metrics.json and the CSV logs hold (no model is loaded).
    """
    root = Path(root).resolve()
    runs = find_runs(root)
    if not runs:
        raise SystemExit(f"error: no metrics.json with test/nll under {root}")
    rows = csv_rows(runs, root)
    paths = {"table1_csv": write_csv(rows, root / "table1.csv")}
    table = table1_markdown(rows)
    paths["table1_md"] = root / "table1.md"
    paths["table1_md"].write_text(table)
    paths["nll_vs_k"] = figures.nll_vs_k(
        nll_curves(rows), root / "nll_vs_k.png", paper_curves(rows)
    )
    notes = {}
    curves = learning_curve_data(runs)
    if curves:
        paths["learning_curves"] = figures.learning_curves(curves, root / "learning_curves.png")
    else:
        notes["learning_curves"] = NO_CSV_LOG
    if checkpoints:
        paths.update(checkpoint_figures(runs, root, list(ks or BOUND_KS), chunk_size, seed))
    for name in ("bound_vs_k", "unit_variances", "samples_reconstructions"):
        if name not in paths:
            notes[name] = NO_CHECKPOINT if checkpoints else "not drawn: --no-checkpoints"
    for name, why in notes.items():
        print(f"{name}.png: {why}")
    figures_only = {k: v for k, v in paths.items() if v.suffix == ".png"}
    paths["report_html"] = html.write_report(root, table, figures_only, notes, sample_pngs(runs))
    log_to_wandb(runs, root, rows, figures_only)
    return paths


def sample_pngs(runs: list[Run], most: int = 12) -> dict[str, Path]:
    """Each run's ``samples.png`` by its label, or only the best runs' when there are many."""
    chosen = runs if len(runs) <= most else best_runs(runs)
    pngs = {}
    for run in chosen:
        if (run.path / "samples.png").is_file():
            pngs[f"{run.label}, {_panel(run)} ({run.path.name})"] = run.path / "samples.png"
    return pngs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iwae.reports.table1", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", help="a run directory or a multirun (sweep) directory")
    parser.add_argument(
        "--ks",
        default=",".join(map(str, BOUND_KS)),
        help="k values of the bound-vs-k figure (default: %(default)s)",
    )
    parser.add_argument("--chunk-size", type=int, default=500, help="samples per chunk")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bound-vs-k estimate")
    parser.add_argument(
        "--no-checkpoints", action="store_true", help="skip the figures that load models"
    )
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    paths = report(args.root, ks, args.chunk_size, args.seed, not args.no_checkpoints)
    print(paths["table1_md"].read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
