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
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from iwae.errors import UserError, exit_on_user_error
from iwae.evaluation import BOUND_KS
from iwae.reports import figures, html, paper
from iwae.reports.curves import (
    checkpoint_data,
    checkpoint_figures,
    learning_curve_data,
    nll_curves,
    paper_curves,
    write_bound_cache,
)
from iwae.reports.runs import (
    CSV_FIELDS,
    Run,
    best_runs,
    csv_rows,
    find_runs,
    objective_columns,
    panel,
    write_csv,
)
from iwae.reports.wandb_report import log_to_wandb
from iwae.training.outputs import write_text_atomic


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


def _paperobjectives(rows: list[dict[str, Any]], data: str, binarization: str) -> list[str]:
    """The objectives of this section for which the paper published a number of some row."""
    return [
        o
        for o in objective_columns(rows)
        if any(
            paper.paper_value(data, binarization, r["layers"], o, r["k"])
            for r in rows
            if (r["data"], r["binarization"] or "") == (data, binarization)
            and not r.get("architecture")
        )
    ]


def table1_markdown(rows: list[dict[str, Any]]) -> str:
    """The paper's Table 1 layout from the CSV rows: per dataset and binarization, rows
    (layers, k), one column per objective, cells "test NLL ± standard error (active units)",
    and the paper's numbers beside where the data is one the paper used."""
    cells: dict[tuple, list] = defaultdict(list)
    for r in rows:
        net = r.get("architecture") or ""
        cells[
            (r["data"], r["binarization"] or "", net, r["layers"], r["k"], r["objective"])
        ].append(r)
    objectives = objective_columns(rows)
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
        published = _paperobjectives(rows, data, binarization)
        lines += ["", f"**{data}**" + (f", {binarization} binarization" if binarization else "")]
        lines.append("")
        section = {
            (r.get("architecture") or "", r["layers"], r["k"])
            for r in rows
            if (r["data"], r["binarization"] or "") == (data, binarization)
        }
        # Another network than the paper's MLP gets rows of its own, named in a first column.
        named = any(net for net, _, _ in section)
        header = [o.upper() for o in objectives] + [f"{o.upper()} (paper)" for o in published]
        lines.append("| " + "model | " * named + "layers | k | " + " | ".join(header) + " |")
        lines.append("|---|---|" + "---|" * (len(header) + named))
        for net, layers, k in sorted(section):
            row = [_cell(cells[(data, binarization, net, layers, k, o)]) for o in objectives]
            row += [
                "" if net else _paper_cell(paper.paper_value(data, binarization, layers, o, k))
                for o in published
            ]
            first = f"| {net or 'MLP'} " * named
            lines.append(f"{first}| {layers} | {k} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


NO_CSV_LOG = "not drawn: no run has a CSV log (logger=csv or 'logger=[csv,wandb]')"
NO_CHECKPOINT = "not drawn: no run has checkpoints/last.ckpt"
NO_IMAGE_SHAPE = "not drawn: the images are flat rows of no square length (give data.image_shape)"


def report(
    root: str | Path,
    ks: list[int] | None = None,
    chunk_size: int = 500,
    seed: int = 0,
    checkpoints: bool = True,
) -> dict[str, Path]:
    """Write ``table1.md``, ``table1.csv``, the figures and ``report.html`` into ``root``;
    return their paths. Print one line for each figure not drawn, saying why.

    Everything is read and checked first (every metrics.json, log and checkpoint): a folder
    that is refused gets no file. Then the tables, then the figures, each optional (one that
    fails is a printed line).

    ``ks``: the k of the bound-vs-k figure (default 1, 5, 50, 500, 5000); ``checkpoints=False``
    draws only what metrics.json and the CSV logs hold (no model is loaded).
    """
    root = Path(root).resolve()
    runs = find_runs(root)
    if not runs:
        raise UserError(f"no metrics.json with test/nll under {root}")
    rows = table_rows(runs, root)
    table = table1_markdown(rows)
    curves = learning_curve_data(runs)
    models = (
        checkpoint_data(runs, root, list(ks or BOUND_KS), chunk_size, seed) if checkpoints else None
    )
    table1_csv = write_csv(rows, root / "table1.csv", TABLE_FIELDS)
    paths = {"table1_csv": table1_csv, "table1_md": root / "table1.md"}
    write_text_atomic(paths["table1_md"], table)
    drawings = {
        "nll_vs_k": lambda: figures.nll_vs_k(
            nll_curves(rows), root / "nll_vs_k.png", paper_curves(rows)
        )
    }
    notes = {}
    if curves:
        drawings["learning_curves"] = lambda: figures.learning_curves(
            curves, root / "learning_curves.png"
        )
    else:
        notes["learning_curves"] = NO_CSV_LOG
    if models is not None:
        write_bound_cache(models.best, models.cache)
        drawings.update(checkpoint_figures(models, root))
        if not models.grids:
            del drawings["samples_reconstructions"]
            notes["samples_reconstructions"] = NO_IMAGE_SHAPE
    for name, draw in drawings.items():
        try:
            paths[name] = draw()
        except Exception as err:  # noqa: BLE001 (a figure is optional: the tables are written)
            notes[name] = f"not drawn: {type(err).__name__}: {err}".splitlines()[0]
    for name in ("bound_vs_k", "unit_variances", "samples_reconstructions"):
        if name not in paths and name not in notes:
            notes[name] = NO_CHECKPOINT if checkpoints else "not drawn: --no-checkpoints"
    for name, why in notes.items():
        print(f"{name}.png: {why}")
    figures_only = {k: v for k, v in paths.items() if v.suffix == ".png"}
    paths["report_html"] = html.write_report(root, table, figures_only, notes, sample_pngs(runs))
    log_to_wandb(runs, root, rows, figures_only)
    return paths


TABLE_FIELDS = (*CSV_FIELDS[:3], "architecture", *CSV_FIELDS[3:])


def table_rows(runs: list[Run], root: Path) -> list[dict[str, Any]]:
    """`csv_rows` with each run's `architecture`."""
    return [
        dict(row, architecture=run.architecture) for row, run in zip(csv_rows(runs, root), runs)
    ]


def sample_pngs(runs: list[Run], most: int = 12) -> dict[str, Path]:
    """Each run's ``samples.png`` by its label, or only the best runs' when there are many."""
    chosen = runs if len(runs) <= most else best_runs(runs)
    pngs = {}
    for run in chosen:
        png = run.file("samples.png")  # a link to a file elsewhere is not embedded
        if png is not None:
            pngs[f"{run.label}, {panel(run)} ({run.path.name})"] = png
    return pngs


@exit_on_user_error
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
