"""The reproduction study: when, and by how much, the IWAE overtakes the VAE along training.

Runs trained with ``callbacks=snapshots`` (``experiment=reproduction_digits``) keep a
checkpoint every few epochs. This module measures each one the same way and turns the
measurements into ``docs/reproduction/``:

- ``evaluate``: for every snapshot, test NLL with k = 5000 on the run's fixed test digits
  (per image, so that runs can be paired digit by digit), the k-sample NLL of a fixed
  binarization of the first ``--train-images`` training digits (is a gap optimisation or
  overfitting?), and active units per layer. Cached beside the checkpoint as ``.eval.json``.
- ``report``: a CSV with one row per run and snapshot, the paired difference IWAE - VAE at
  each point (same seed, same digits), two figures and a markdown table of the last point.

    python -m iwae.reports.reproduction evaluate multirun/reproduction/k5/*
    python -m iwae.reports.reproduction report multirun/reproduction --out docs/reproduction
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from datamodules.base import binarize_once
from iwae.errors import UserError, exit_on_user_error
from iwae.evaluation import active_units, evaluate_nll
from iwae.reports.files import read_json, regular_file_inside
from iwae.training.outputs import save_figure, write_json_atomic, write_text_atomic

CSV_NAME, TABLE_NAME = "runs.csv", "table.md"
FIELDS = [
    "data", "model", "objective", "k", "seed", "epoch", "step",
    "test_nll", "test_nll_stderr", "train_nll", "train_nll_stderr",
    "active_units", "active_units_per_layer", "eval_k", "run",
]  # fmt: skip


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
        rows = read_csv(table)
        is_ll = torch.tensor([float(r["log_p_is"]) for r in rows], dtype=torch.float64)
        ais = [float(r["log_p_ais"]) for r in rows if r.get("log_p_ais")]
        return is_ll, torch.tensor(ais, dtype=torch.float64) if ais else None
    return None


def _per_image_ll(model, x, k: int, chunk_size: int, seed: int) -> torch.Tensor:
    from iwae.evaluation import log_likelihood

    g = torch.Generator(device=x.device).manual_seed(seed)
    return log_likelihood(model.eval(), x, k, chunk_size, g).cpu()


def evaluate_runs(run_dirs: Iterable[Path], **kw: Any) -> None:
    for run_dir in run_dirs:
        for ckpt in snapshots(run_dir):
            out = ckpt.with_suffix(".eval.json")
            if not out.is_file():
                write_json_atomic(out, {**evaluate_snapshot(ckpt, **kw), "run": str(run_dir)})
                print(f"evaluated {ckpt}", flush=True)


def load_points(root: Path) -> list[dict[str, Any]]:
    """Every evaluated snapshot below ``root``, sorted by configuration, seed and step."""
    found = [p for p in root.rglob("*.eval.json") if regular_file_inside(p, root)]
    points = [read_json(p) for p in found]
    return sorted(points, key=lambda p: (p["model"], p["k"], p["objective"], p["seed"], p["step"]))


def paired_differences(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """IWAE - VAE test NLL at each (model, k, step), paired by seed and by test digit.

    ``diff``: mean over seeds of the per-seed mean difference. ``se_digits``: standard error
    over digits of the seed-averaged per-digit difference (data and Monte Carlo noise);
    ``se_seeds``: standard error over seeds of the per-seed differences (training noise; NaN
    with one seed). The larger of the two is the honest error bar.
    """
    rows = _paired(points, "test_ll_per_image")
    ais = {
        tuple(r[k] for k in ("data", "model", "k", "step")): r
        for r in _paired(points, "test_ll_ais_per_image")
    }
    for r in rows:  # the same pairing on AIS estimates, where both runs have them
        twin = ais.get((r["data"], r["model"], r["k"], r["step"]))
        if twin is not None:
            r.update(
                {
                    "diff_ais": twin["diff"],
                    "se_digits_ais": twin["se_digits"],
                    "digits_ais": twin["digits"],
                }
            )
    return rows


def _paired(points: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """`paired_differences` of the per-digit values ``field`` (the first digits common to
    both runs: AIS may cover only the first ``eval.ais.images``)."""
    by_key: dict[tuple, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for p in points:
        if field in p:
            key = (p["data"], p["model"], p["k"], p["step"])
            by_key[key][p["objective"]][p["seed"]] = p[field]
    rows = []
    for (data, model, k, step), runs in sorted(by_key.items()):
        seeds = sorted(set(runs.get("vae", {})) & set(runs.get("iwae", {})))
        if not seeds:
            continue
        # NLL difference per digit = -(ll_iwae - ll_vae)
        n = min(len(runs[o][s]) for o in ("vae", "iwae") for s in seeds)
        per_seed = [
            torch.tensor(runs["vae"][s][:n], dtype=torch.float64)
            - torch.tensor(runs["iwae"][s][:n], dtype=torch.float64)
            for s in seeds
        ]
        per_digit = torch.stack(per_seed).mean(0)
        seed_means = [d.mean().item() for d in per_seed]
        se_seeds = (
            statistics.stdev(seed_means) / math.sqrt(len(seeds)) if len(seeds) > 1 else math.nan
        )
        rows.append(
            {
                "data": data,
                "model": model,
                "k": k,
                "step": step,
                "seeds": len(seeds),
                "diff": per_digit.mean().item(),
                "se_digits": per_digit.std().item() / math.sqrt(len(per_digit)),
                "se_seeds": se_seeds,
                "digits": n,
            }
        )
    return rows


def write_csv(points: list[dict[str, Any]], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, FIELDS, extrasaction="ignore")
    writer.writeheader()
    for p in points:
        writer.writerow({k: _rounded(p.get(k)) for k in FIELDS})
    write_text_atomic(path, text.getvalue())  # a link at path is replaced, not followed


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def last_point_table(rows: list[dict[str, str]]) -> str:
    """Markdown: each configuration at its last snapshot, mean ± standard error over seeds
    (from the CSV alone, so that a test can check docs/reproduction.md against it)."""
    groups: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    last: dict[tuple, int] = {}
    for r in rows:
        key = (r["data"], r["model"], int(r["k"]), r["objective"])
        last[key] = max(last.get(key, 0), int(r["step"]))
        groups[key].append(r)
    lines = [
        "| data | model | k | objective | steps | seeds | test NLL | train NLL | active units |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda t: (t[0], t[1], t[2], t[3] != "vae")):
        final = [r for r in groups[key] if int(r["step"]) == last[key]]
        cells = [_mean_se([float(r[c]) for r in final]) for c in ("test_nll", "train_nll")]
        units = _mean_se([float(r["active_units"]) for r in final], digits=1)
        data, model, k, objective = key
        lines.append(
            f"| {data} | {model} | {k} | {objective} | {last[key]} | {len(final)} "
            f"| {cells[0]} | {cells[1]} | {units} |"
        )
    return "\n".join(lines)


def _mean_se(values: list[float], digits: int = 2) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) / math.sqrt(len(values)):.{digits}f}"


def report(root: Path, out: Path) -> None:
    """Write the CSV, the paired differences, the figures and the last-point table."""
    points = load_points(root)
    if not points:
        raise UserError(f"no evaluated snapshots (*.eval.json) below {root}")
    write_csv(points, out / CSV_NAME)
    diffs = paired_differences(points)
    text = io.StringIO(newline="")
    fields = list(dict.fromkeys(key for row in diffs for key in row)) or ["diff"]
    writer = csv.DictWriter(text, fields)  # AIS columns only where some row has them
    writer.writeheader()
    writer.writerows({k: _rounded(v) for k, v in d.items()} for d in diffs)
    write_text_atomic(out / "differences.csv", text.getvalue())
    write_text_atomic(out / TABLE_NAME, last_point_table(read_csv(out / CSV_NAME)) + "\n")
    _figures(points, diffs, out)
    print(f"wrote {out}/{{{CSV_NAME},differences.csv,{TABLE_NAME},*.png}}")


def _figures(points: list[dict[str, Any]], diffs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (data, model, k), rows in _grouped(diffs, ("data", "model", "k")).items():
        err = [2 * max(r["se_digits"], 0 if math.isnan(r["se_seeds"]) else r["se_seeds"])
               for r in rows]  # fmt: skip
        ax.errorbar([r["step"] for r in rows], [r["diff"] for r in rows], yerr=err,
                    marker="o", capsize=3, label=f"{data}, {model}, k={k}")  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training steps", ylabel="test NLL: IWAE − VAE (nats)",
           title="IWAE − VAE (below 0: IWAE better); bars: 2 SE")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "iwae_minus_vae.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for (model, k, objective), rows in _grouped(points, ("model", "k", "objective")).items():
        by_step = _grouped(rows, ("step",))
        steps = sorted(s for (s,) in by_step)
        means = [statistics.fmean(r["active_units"] for r in by_step[(s,)]) for s in steps]
        style = "-" if objective == "iwae" else "--"
        ax.plot(steps, means, style, marker="o", label=f"{objective} k={k} ({model})")
    ax.set(xlabel="training steps", ylabel="active units (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "active_units.png")
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
    rep = sub.add_parser("report", help="CSV, differences, figures and table of a study")
    rep.add_argument("root", type=Path)
    rep.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        torch.set_num_threads(args.threads)
        evaluate_runs(
            args.runs, k=args.k, chunk_size=args.chunk_size, train_images=args.train_images
        )
    else:
        report(args.root, args.out)


if __name__ == "__main__":
    main()
