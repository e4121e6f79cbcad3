"""The reproduction study: Table 1 in miniature, every cell measured along training.

Runs trained with ``callbacks=snapshots`` (``experiment=reproduction_digits``) keep a
checkpoint every few epochs. This module measures each one the same way and turns the
measurements into ``docs/reproduction/`` and the tables of ``docs/reproduction.md``:

- ``evaluate``: for every snapshot, test NLL with k = 5000 on the run's fixed test digits
  (per digit, so that runs can be paired digit by digit; a ``mode=eval eval.per_image=true``
  of the snapshot is read instead of recomputed, with its AIS values), the k-sample NLL of a
  fixed binarization of the first ``--train-images`` training digits (is a gap optimisation or
  overfitting?), and active units per layer. Cached beside the checkpoint as ``.eval.json``,
  with the commit that trained the run.
- ``report``: appends a study folder's snapshots to ``runs.csv`` (``table2_runs.csv`` for the
  fine-tuning runs of Table 2, ``experiment=table2_digits``) and ``test_log_p.csv`` (rows of the
  runs given are replaced, the others kept), then writes the figures and, with ``--page``, the
  generated tables of the page (`iwae.reports.miniature`, `iwae.reports.miniature_table2`) from
  the CSVs alone; with ``--summary``, the README's short form.

    python -m iwae.reports.reproduction evaluate study/one_layer/k5/iwae/seed0
    python -m iwae.reports.reproduction report study --out docs/reproduction \\
        --page docs/reproduction.md --summary README.md
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from datamodules.base import binarize_once
from iwae.errors import UserError, exit_on_user_error
from iwae.evaluation import active_units, evaluate_nll
from iwae.reports import miniature, miniature_table2
from iwae.reports.files import read_json, regular_file_inside
from iwae.reports.study_files import (
    LOG_P_CSV,
    RUNS_CSV,
    TABLE2_CSV,
    LogP,
    merge_study,
    page_with_blocks,
    read_study,
    read_table2,
)
from iwae.training.checkpointing import load_checkpoint
from iwae.training.outputs import (
    optional_artefact,
    save_figure,
    write_json_atomic,
    write_text_atomic,
)


def snapshots(run_dir: Path, root: Path | None = None) -> list[Path]:
    """The run's snapshot checkpoints: regular files inside ``root`` (default: the run)."""
    found = (run_dir / "checkpoints" / "snapshots").glob("*.ckpt")
    return sorted(p for p in found if regular_file_inside(p, root or run_dir))


def evaluate_snapshot(
    ckpt: Path, k: int = 5000, chunk_size: int = 500, train_images: int = 500, seed: int = 0
) -> dict[str, Any]:
    """The study's measures of one checkpoint (see the module docstring)."""
    from iwae.launch.assembly import load_run  # the one loader that rebuilds a run safely

    run = load_run(ckpt)
    test = run.test_batches()
    saved = per_image_csv(ckpt, k, seed)
    if saved is not None:  # a mode=eval of this checkpoint wrote them: same numbers, no rerun
        ll, ais_ll = saved
    else:
        ll, ais_ll = (
            torch.cat([_per_image_ll(run.model, x, k, chunk_size, seed) for x in test]),
            None,
        )
    train_probs = run.datamodule.prepare().train[:train_images]
    train_x = binarize_once(train_probs, run.datamodule.eval_seed + 2)  # fixed, same every run
    train = evaluate_nll(run.model, [train_x], k, chunk_size, seed, progress=False)
    units, _ = active_units(run.model, test, seed=seed)
    cfg = run.config
    return {
        "data": run.datamodule.name,
        "model": f"{len(cfg.model.latent_dims)}_layer",
        "objective": cfg.objective._target_.rsplit(".", 1)[-1].lower(),
        "k": int(cfg.k),
        "seed": int(cfg.seed),
        "epoch": int(run.checkpoint["epoch"]) + 1,  # epochs completed
        "step": int(run.checkpoint["global_step"]),
        "test_ll_per_image": ll.tolist(),
        **({"test_ll_ais_per_image": ais_ll.tolist()} if ais_ll is not None else {}),
        "test_nll": -ll.mean().item(),
        "test_nll_stderr": ll.std().item() / math.sqrt(len(ll)),
        "train_nll": train["nll"],
        "train_nll_stderr": train["nll_stderr"],
        "active_units": sum(units),
        "active_units_per_layer": "+".join(map(str, units)),
        "eval_k": k,
        "init_from": init_from(run.checkpoint),
    }


def per_image_csv(ckpt: Path, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(log p_IS ``[N]``, log p_AIS ``[n]`` or None) from the ``log_likelihoods.csv`` of a
    ``mode=eval eval.per_image=true`` run of ``ckpt`` with the same k and seed, in the run's
    ``eval/`` directory (where mode=eval writes beside a training run); None if there is none."""
    run_dir = ckpt.resolve().parents[2 if ckpt.parent.name == "snapshots" else 1]
    for metrics_path in sorted((run_dir / "eval").glob("*/metrics.json")):
        table = metrics_path.with_name("log_likelihoods.csv")
        if not regular_file_inside(metrics_path, run_dir):
            continue
        metrics = read_json(metrics_path)
        same = metrics.get("eval/k") == k and metrics.get("eval/seed") == seed
        if not (regular_file_inside(table, run_dir) and same and metrics.get("eval/data") is None):
            continue
        if Path(str(metrics.get("eval/ckpt_path"))).resolve() != ckpt.resolve():
            continue
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
        is_ll = torch.tensor([float(r["log_p_is"]) for r in rows], dtype=torch.float64)
        ais = [float(r["log_p_ais"]) for r in rows if r.get("log_p_ais")]
        return is_ll, torch.tensor(ais, dtype=torch.float64) if ais else None
    return None


def _per_image_ll(model, x, k: int, chunk_size: int, seed: int) -> torch.Tensor:
    from iwae.evaluation import log_likelihood

    g = torch.Generator(device=x.device).manual_seed(seed)
    return log_likelihood(model.eval(), x, k, chunk_size, g).cpu()


def evaluate_runs(run_dirs: Iterable[Path], commit: str | None = None, **kw: Any) -> None:
    """Measure every snapshot not yet measured. The commit that trained a run is its
    ``metrics.json``'s ``code/commit``, or ``commit`` for runs trained before that key existed;
    it is also filled into measurements cached without one. A folder that is missing or
    holds no snapshot is a one-line `UserError`, before any is measured."""
    run_dirs = list(run_dirs)
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} does not exist: nothing to evaluate")
        if not snapshots(run_dir):
            raise UserError(
                f"nothing to evaluate in {run_dir}: no checkpoints/snapshots/*.ckpt (train it "
                "with callbacks=snapshots, as experiment=reproduction_digits does)"
            )
    for run_dir in run_dirs:
        trained = trained_by(run_dir) or commit
        for ckpt in snapshots(run_dir):
            out = ckpt.with_suffix(".eval.json")
            if not out.is_file():
                write_json_atomic(out, {**evaluate_snapshot(ckpt, **kw), "commit": trained})
                print(f"evaluated {ckpt}", flush=True)
                continue
            cached = read_json(out)
            missing = {"commit": trained} if trained and not cached.get("commit") else {}
            if "init_from" in cached and cached["init_from"] is None:  # maybe read from the
                missing["init_from"] = init_from(load_checkpoint(ckpt))  # rebuilt config: again
            if any(missing.values()):
                write_json_atomic(out, {**cached, **missing})


def init_from(checkpoint: dict[str, Any]) -> str | None:
    """The checkpoint a fine-tuning run (Table 2) started from: the stored run config's
    ``init_from``, which the config rebuilt for loading leaves out (a resume ignores it)."""
    return (checkpoint.get("iwae_config") or {}).get("init_from")


def trained_by(run_dir: Path) -> str | None:
    """The ``code/commit`` of a training run's ``metrics.json``, if it has one."""
    metrics = run_dir / "metrics.json"
    return read_json(metrics).get("code/commit") if regular_file_inside(metrics, run_dir) else None


def load_points(root: Path) -> list[dict[str, Any]]:
    """Every evaluated snapshot below ``root``, its ``run`` named relative to ``root``
    (``one_layer/k5/iwae/seed0``: no machine path goes into the committed files); a fine-tuning
    run's ``init_from`` becomes the run and step it started from (``before_run``,
    ``before_step``), which must lie in the study too."""
    found = [p for p in root.rglob("*.eval.json") if regular_file_inside(p, root)]
    points = []
    for path in found:
        point = read_json(path)
        point["run"] = path.parents[2].relative_to(root).as_posix() or "."
        if point.get("init_from"):
            point["before_run"], point["before_step"] = _before(Path(point["init_from"]), root)
        points.append(point)
    return sorted(points, key=lambda p: (p["model"], p["k"], p["objective"], p["seed"], p["step"]))


def _before(ckpt: Path, root: Path) -> tuple[str, int]:
    measured = ckpt.with_suffix(".eval.json")
    if not regular_file_inside(measured, root):
        raise UserError(
            f"{ckpt}, a fine-tuning run's init_from, has no evaluated snapshot in the study "
            f"{root}; evaluate its run there, or report the study that holds both"
        )
    run = ckpt.resolve().parents[2].relative_to(root.resolve()).as_posix()
    return run, read_json(measured)["step"]


def report(
    root: Path | None, out: Path, page: Path | None = None, summary: Path | None = None
) -> None:
    """Append the snapshots below ``root`` to ``out``'s CSVs (a run's old rows are replaced),
    then write the figures and, with ``page``, its generated tables from the CSVs alone (with
    ``summary``, that page's short form, e.g. the README's).

    The study is merged and every page checked in a staging folder first: a refusal (no
    snapshot, a page without its blocks) leaves ``out`` and the pages as they were.
    """
    points = load_points(root) if root is not None else []
    if root is not None and not points:
        raise UserError(f"no evaluated snapshots (*.eval.json) below {root}; run evaluate")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for name in STUDY_FILES:
            if regular_file_inside(out / name, out):
                shutil.copyfile(out / name, staged / name)
        if points:
            merge_study(staged, points)
        rows, log_p = read_study(staged)
        if not rows:
            raise UserError(f"{out / RUNS_CSV} holds no study; give the study folder to add")
        pages: dict[Path, str] = {}
        for target, blocks in ((page, page_blocks), (summary, summary_block)):
            if target is not None:
                pages[target] = page_with_blocks(target, blocks(staged), pages.get(target))
        out.mkdir(parents=True, exist_ok=True)
        for name in STUDY_FILES:  # everything checked: now the study, then the pages
            if (staged / name).is_file():
                write_text_atomic(out / name, (staged / name).read_text())
    for target, text in pages.items():
        write_text_atomic(target, text)
    # The figures are optional: one that cannot be drawn is a warning line, the CSVs stand.
    optional_artefact(f"figures in {out}", lambda: _figures(rows, log_p, out))
    table2 = read_table2(out)
    if table2:
        optional_artefact(f"{out / 'table2.png'}", lambda: _table2_figure(rows, table2, out))
    print(
        f"wrote {out}/{{{RUNS_CSV},{TABLE2_CSV},{LOG_P_CSV},*.png}}"
        + "".join(f" and {p}" for p in (page, summary) if p)
    )


STUDY_FILES = (RUNS_CSV, TABLE2_CSV, LOG_P_CSV)


def page_blocks(out: Path) -> dict[str, str]:
    """Every generated block of docs/reproduction.md, from ``out``'s CSVs alone."""
    rows, log_p = read_study(out)
    return {
        **miniature.blocks(rows, log_p),
        **miniature_table2.blocks(rows, read_table2(out), log_p),
    }


def summary_block(out: Path) -> dict[str, str]:
    """The README's summary of Table 1 in miniature, from ``out``'s CSVs alone."""
    return {"summary": miniature.summary(*read_study(out))}


def _figures(rows: list[dict[str, Any]], log_p: LogP, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model = miniature.models(rows)
    fig, axes = plt.subplots(1, len(by_model), figsize=(6 * len(by_model), 4), squeeze=False)
    colours = {1: "tab:grey", 5: "tab:blue", 50: "tab:red"}
    for ax, model in zip(axes[0], by_model):
        cells = _grouped([r for r in rows if r["model"] == model], ("k", "objective"))
        for (k, objective), runs in cells.items():
            by_step = _grouped(runs, ("step",))
            steps = [s for (s,) in by_step]
            nll = [[r["test_nll"] for r in by_step[(s,)]] for s in steps]
            err = [statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0 for v in nll]
            label = f"k={k}" if k == 1 else f"{objective.upper()}-{k}"
            ax.errorbar(steps, [statistics.fmean(v) for v in nll], yerr=err, marker="o",
                        capsize=3, color=colours.get(k), label=label,
                        linestyle="-" if objective == "iwae" or k == 1 else "--")  # fmt: skip
        ax.set(xlabel="training steps", ylabel="test NLL, k = 5000 (nats)",
               title=f"{model.replace('_', ' ')}: mean ± SE over seeds")  # fmt: skip
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "nll_vs_steps.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in by_model:
        for claim in miniature.CLAIMS[:2]:  # IWAE-k - VAE-k
            cells = claim.cells(model)
            points = [(s, miniature.combine(rows, log_p, cells, s))
                      for s in miniature.steps_of(rows, model)]  # fmt: skip
            points = [(s, p) for s, p in points if p is not None]
            if points:
                ax.errorbar([s for s, _ in points], [p.diff for _, p in points],
                            yerr=[2 * p.se for _, p in points], marker="o", capsize=3,
                            label=f"{model.replace('_', ' ')}, {claim.name}")  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training steps", ylabel="test NLL difference (nats)",
           title="IWAE − VAE, paired (below 0: IWAE better); bars: 2 SE")  # fmt: skip
    if ax.get_legend_handles_labels()[0]:  # no pair measured yet: no legend
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "iwae_minus_vae.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for (model, k, objective), runs in _grouped(rows, ("model", "k", "objective")).items():
        by_step = _grouped(runs, ("step",))
        steps = [s for (s,) in by_step]
        means = [statistics.fmean(r["active_units"] for r in by_step[(s,)]) for s in steps]
        style = "-" if objective == "iwae" else "--"
        ax.plot(steps, means, style, marker="o", color=colours.get(k),
                label=f"{objective} k={k} ({model})")  # fmt: skip
    ax.set(xlabel="training steps", ylabel="active units (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "active_units.png")
    plt.close(fig)


def _table2_figure(rows: list[dict[str, Any]], table2: list[dict[str, Any]], out: Path) -> None:
    """Test NLL of each switch and control from its "before" point (0 steps) on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    found = miniature_table2.pairs(rows, table2)
    for switch in miniature_table2.SWITCHES:
        seeds = found.get((switch.before, switch.after))
        if not seeds:
            continue
        runs = {after["run"] for _, after in seeds.values()}
        by_step = _grouped([r for r in table2 if r["run"] in runs], ("step",))
        steps = [0, *(s for (s,) in by_step)]
        nll = [[b["test_nll"] for b, _ in seeds.values()]]
        nll += [[r["test_nll"] for r in by_step[(s,)]] for s in steps[1:]]
        style = "-" if switch.sign is not None else ":"
        colour = "tab:red" if switch.after == miniature_table2.IWAE else "tab:grey"
        ax.plot(steps, [statistics.fmean(v) for v in nll], style, marker="o", color=colour,
                label=switch.name)  # fmt: skip
    ax.set(xlabel="steps after the \"before\" model", ylabel="test NLL, k = 5000 (nats)",
           title="Table 2 in miniature: mean over seeds")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "table2.png")
    plt.close(fig)


def _grouped(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return dict(sorted(groups.items()))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iwae.reports.reproduction", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="measure every snapshot of the given run directories")
    ev.add_argument("runs", nargs="+", type=Path)
    ev.add_argument("--k", type=int, default=5000)
    ev.add_argument("--chunk-size", type=int, default=500)
    ev.add_argument("--train-images", type=int, default=500)
    ev.add_argument("--threads", type=int, default=1, help="torch threads (parallel evaluations)")
    ev.add_argument("--commit", help="the commit that trained runs whose metrics.json lacks one")
    rep = sub.add_parser("report", help="append a study to the CSVs; figures and page tables")
    rep.add_argument("root", type=Path, nargs="?", help="study folder to add (none: CSVs only)")
    rep.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    rep.add_argument("--page", type=Path, help="markdown page whose report blocks to rewrite")
    rep.add_argument("--summary", type=Path, help="markdown page with a report:summary block")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        torch.set_num_threads(args.threads)
        evaluate_runs(
            args.runs,
            commit=args.commit,
            k=args.k,
            chunk_size=args.chunk_size,
            train_images=args.train_images,
        )
    else:
        report(args.root, args.out, args.page, args.summary)


if __name__ == "__main__":
    main()
