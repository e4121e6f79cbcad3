"""Table 1 in miniature: the tables and statements of ``docs/reproduction.md``, computed from
the study's committed CSVs alone (`iwae.reports.study_files`), so that a test can regenerate
them and compare.

A *cell* is (model, k, objective). At k = 1 the VAE and IWAE objectives are the same, so one
k = 1 cell (whichever objective trained it) fills both columns. Differences between cells are
paired by seed and by test digit: for each seed present in every cell, the per-digit NLL
combination (e.g. IWAE-5 - VAE-5) is averaged over digits, then over seeds. Two standard errors
go with it: over digits of the seed-averaged per-digit values (test data and Monte Carlo
noise), and over seeds of the per-seed means (training noise; none with one seed). The larger
is the error bar; a claim is *shown* when the difference has the paper's sign and lies more than
two of them from zero, *reversed* when it has the other sign by as much.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from iwae.reports.paper import PAPER
from iwae.reports.study_files import LogP

Cell = tuple[str, int, str]  # (model, k, objective)
LAYERS = {"1_layer": 1, "2_layer": 2}


def cell_of(row: dict[str, Any]) -> Cell:
    objective = "vae" if row["k"] == 1 else row["objective"]  # k = 1: one model for both
    return (row["model"], int(row["k"]), objective)


def last_step(rows: list[dict[str, Any]]) -> dict[Cell, int]:
    """Each cell's budget: the last step that all of its runs reached."""
    per_run: dict[tuple[Cell, str], int] = {}
    for r in rows:
        key = (cell_of(r), r["run"])
        per_run[key] = max(per_run.get(key, 0), r["step"])
    budget: dict[Cell, int] = {}
    for (cell, _), step in per_run.items():
        budget[cell] = min(budget.get(cell, step), step)
    return budget


@dataclass
class Paired:
    diff: float
    se_digits: float
    se_seeds: float  # NaN with one seed
    seeds: int
    digits: int

    @property
    def se(self) -> float:
        known = [se for se in (self.se_digits, self.se_seeds) if not math.isnan(se)]
        return max(known) if known else math.nan

    def verdict(self, sign: int | None) -> str:
        if sign is None:
            return "measured"
        if math.isnan(self.se):
            return "no error bar"
        if abs(self.diff) <= 2 * self.se:
            return "not shown"
        return "shown" if math.copysign(1, self.diff) == sign else "reversed"

    def text(self) -> str:
        seeds = "" if math.isnan(self.se_seeds) else f", {self.se_seeds:.2f}"
        return f"{signed(self.diff)} ({self.se_digits:.2f}{seeds})"


def combine(
    rows: list[dict[str, Any]],
    log_p: LogP,
    terms: list[tuple[Cell, int]],
    step: int,
    estimator: str = "is",
) -> Paired | None:
    """sum_c coefficient_c * NLL_c at ``step``, paired by seed and digit (see the module
    docstring); None when no seed has every cell there."""
    runs: dict[Cell, dict[int, list[float]]] = defaultdict(dict)
    for r in rows:
        values = log_p.get((r["run"], r["step"], estimator))
        if r["step"] == step and values:
            runs[cell_of(r)][r["seed"]] = values
    seeds = sorted(set.intersection(*(set(runs.get(c, {})) for c, _ in terms)))
    if not seeds:
        return None
    return paired([[(runs[c][s], w) for c, w in terms] for s in seeds])


def paired(per_seed: list[list[tuple[list[float], int]]]) -> Paired:
    """sum_j w_j * NLL_j for each seed's terms (per-digit log p, coefficient), paired by digit
    within a seed, then averaged over seeds (see the module docstring)."""
    n = min(len(values) for terms in per_seed for values, _ in terms)
    nll = [
        [sum(-w * values[i] for values, w in terms) for i in range(n)] for terms in per_seed
    ]  # NLL = -log p
    per_digit = [statistics.fmean(col) for col in zip(*nll)]
    means = [statistics.fmean(values) for values in nll]
    seeds = len(per_seed)
    return Paired(
        diff=statistics.fmean(per_digit),
        se_digits=statistics.stdev(per_digit) / math.sqrt(n) if n > 1 else math.nan,
        se_seeds=statistics.stdev(means) / math.sqrt(seeds) if seeds > 1 else math.nan,
        seeds=seeds,
        digits=n,
    )


def combine_units(rows: list[dict[str, Any]], a: Cell, b: Cell, step: int) -> Paired | None:
    """Active units of ``a`` minus ``b`` at ``step``, paired by seed (no digits: se over seeds)."""
    units = defaultdict(dict)
    for r in rows:
        if r["step"] == step:
            units[cell_of(r)][r["seed"]] = r["active_units"]
    seeds = sorted(set(units.get(a, {})) & set(units.get(b, {})))
    if not seeds:
        return None
    diffs = [units[a][s] - units[b][s] for s in seeds]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return Paired(statistics.fmean(diffs), math.nan, se, len(seeds), 0)


@dataclass(frozen=True)
class Claim:
    name: str
    terms: tuple[tuple[int, str, int], ...]  # (k, objective, coefficient)
    sign: int | None  # the paper's direction; None: measured, no direction claimed
    meaning: str

    def cells(self, model: str) -> list[tuple[Cell, int]]:
        return [((model, k, "vae" if k == 1 else o), w) for k, o, w in self.terms]

    def paper(self, model: str) -> float | None:
        values = [PAPER.get(("mnist", LAYERS.get(model, 0), o, k)) for k, o, _ in self.terms]
        if None in values:
            return None
        return sum(w * v[0] for (_, _, w), v in zip(self.terms, values))


CLAIMS = [
    Claim("IWAE-5 − VAE-5", ((5, "iwae", 1), (5, "vae", -1)), -1, "the IWAE beats the VAE"),
    Claim("IWAE-50 − VAE-50", ((50, "iwae", 1), (50, "vae", -1)), -1, "the IWAE beats the VAE"),
    Claim("IWAE-5 − k=1", ((5, "iwae", 1), (1, "vae", -1)), -1, "more samples help the IWAE"),
    Claim("IWAE-50 − IWAE-5", ((50, "iwae", 1), (5, "iwae", -1)), -1, "more samples help"),
    Claim("VAE-50 − VAE-5", ((50, "vae", 1), (5, "vae", -1)), None, "the VAE barely gains"),
    Claim(
        "(IWAE-50 − IWAE-5) − (VAE-50 − VAE-5)",
        ((50, "iwae", 1), (5, "iwae", -1), (50, "vae", -1), (5, "vae", 1)),
        -1,
        "k helps the IWAE more than the VAE",
    ),
]
UNIT_CLAIMS = [(5, "active units IWAE-5 − VAE-5"), (50, "active units IWAE-50 − VAE-50")]


def models(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({r["model"] for r in rows})


def common_budget(rows: list[dict[str, Any]], model: str) -> int:
    """The step all of a model's cells reached: where they are compared."""
    return min(step for (m, _, _), step in last_step(rows).items() if m == model)


def steps_of(rows: list[dict[str, Any]], model: str) -> list[int]:
    return sorted({r["step"] for r in rows if r["model"] == model})


def since(
    rows: list[dict[str, Any]], log_p: LogP, claim: Claim, model: str, budget: int
) -> int | None:
    """The first measured step from which the claim is shown at every later point."""
    first = None
    for step in reversed([s for s in steps_of(rows, model) if s <= budget]):
        paired = combine(rows, log_p, claim.cells(model), step)
        if paired is None or paired.verdict(claim.sign) != "shown":
            break
        first = step
    return first


def claims_table(rows: list[dict[str, Any]], log_p: LogP) -> str:
    lines = [
        "| layers | claim (paper's direction) | paper, full MNIST | these runs: IS, all test "
        "digits | AIS, first digits | seeds | at 2 SE | shown since (steps) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in models(rows):
        budget = common_budget(rows, model)
        for claim in CLAIMS:
            paired = combine(rows, log_p, claim.cells(model), budget)
            paper = claim.paper(model)
            paper_text = "" if paper is None else signed(paper)
            if paired is None:
                row = ["not run", "", "", "", ""]
            else:
                ais = combine(rows, log_p, claim.cells(model), budget, "ais")
                first = since(rows, log_p, claim, model, budget) if claim.sign else None
                row = [
                    paired.text(),
                    "" if ais is None else f"{ais.text()} [{ais.digits}]",
                    str(paired.seeds),
                    paired.verdict(claim.sign),
                    "" if first is None else f"{first:,}",
                ]
            lines.append(
                f"| {LAYERS.get(model, model)} | {claim.name} ({claim.meaning}) | {paper_text} | "
                + " | ".join(row)
                + " |"
            )
        for k, name in UNIT_CLAIMS:
            paired = combine_units(rows, (model, k, "iwae"), (model, k, "vae"), budget)
            paper = [PAPER.get(("mnist", LAYERS.get(model, 0), o, k)) for o in ("iwae", "vae")]
            paper_text = f"{paper[0][1]} vs {paper[1][1]}" if None not in paper else ""
            if paired is None:
                row = ["not run", "", "", "", ""]
            else:
                se = "" if math.isnan(paired.se_seeds) else f" ± {paired.se_seeds:.1f}"
                row = [f"{signed(paired.diff, 1)}{se}", "", str(paired.seeds),
                       paired.verdict(1), ""]  # fmt: skip
            lines.append(
                f"| {LAYERS.get(model, model)} | {name} (the IWAE keeps more units) | "
                f"{paper_text} | " + " | ".join(row) + " |"
            )
    return "\n".join(lines)


def statements(rows: list[dict[str, Any]], log_p: LogP) -> str:
    """One line per claim that the runs measure: what they show, at what budget."""
    lines = []
    for model in models(rows):
        budget = common_budget(rows, model)
        for claim in CLAIMS:
            paired = combine(rows, log_p, claim.cells(model), budget)
            if paired is None:
                continue
            verdict = paired.verdict(claim.sign)
            first = since(rows, log_p, claim, model, budget) if claim.sign else None
            when = f", from {first:,} steps on" if first is not None else ""
            lines.append(
                f"- {LAYERS.get(model, model)} layer(s), {claim.name}: **{verdict}** "
                f"({claim.meaning}): {signed(paired.diff)} ± {paired.se:.2f} nats after "
                f"{budget:,} steps, {paired.seeds} seed(s){when}."
            )
    return "\n".join(lines)


def _cells_at_budget(rows: list[dict[str, Any]]) -> dict[Cell, list[dict[str, Any]]]:
    budget = last_step(rows)
    cells: dict[Cell, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["step"] == budget[cell_of(r)]:
            cells[cell_of(r)].append(r)
    return cells


def table1(rows: list[dict[str, Any]]) -> str:
    """The paper's Table 1 layout: test NLL (k = 5000) mean ± SE over seeds, active units."""
    cells = _cells_at_budget(rows)
    lines = [
        "| layers | k | VAE | IWAE | steps | paper VAE | paper IWAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in sorted({m for m, _, _ in cells} | {"1_layer", "2_layer"}):
        layers = LAYERS.get(model, model)
        for k in (1, 5, 50):
            obj = ("vae", "vae") if k == 1 else ("vae", "iwae")
            texts = [_cell_text(cells.get((model, k, o))) for o in obj]
            steps = sorted({r["step"] for o in obj for r in cells.get((model, k, o), [])})
            paper = [PAPER.get(("mnist", layers, o, k)) for o in ("vae", "iwae")]
            paper_text = ["" if p is None else f"{p[0]:.2f} ({p[1]})" for p in paper]
            lines.append(
                f"| {layers} | {k} | {texts[0]} | {texts[1]} | "
                f"{'/'.join(f'{s:,}' for s in steps)} | {paper_text[0]} | {paper_text[1]} |"
            )
    return "\n".join(lines)


def _cell_text(runs: list[dict[str, Any]] | None) -> str:
    if not runs:
        return "not run"
    nll = [r["test_nll"] for r in runs]
    units = units_per_layer(runs)
    if len(runs) == 1:
        return f"{nll[0]:.2f} ({units}) [1 seed]"
    se = statistics.stdev(nll) / math.sqrt(len(nll))
    return f"{statistics.fmean(nll):.2f} ± {se:.2f} ({units}) [{len(runs)} seeds]"


def units_per_layer(runs: list[dict[str, Any]]) -> str:
    """Active units per stochastic layer, mean over the runs, as the paper writes them: 17+5."""
    try:
        layers = [[float(u) for u in str(r["active_units_per_layer"]).split("+")] for r in runs]
    except ValueError:  # a row without the per-layer split
        layers = []
    if not layers or len({len(u) for u in layers}) != 1:  # no common split: the mean total
        return f"{statistics.fmean(r['active_units'] for r in runs):.0f}"
    return "+".join(f"{statistics.fmean(col):.0f}" for col in zip(*layers))


SUMMARY_CELLS = [(1, "vae", "k = 1"), (5, "vae", "VAE-5"), (5, "iwae", "IWAE-5"),
                 (50, "vae", "VAE-50"), (50, "iwae", "IWAE-50")]  # fmt: skip


def summary(rows: list[dict[str, Any]], log_p: LogP) -> str:
    """The README's short form: each cell's test NLL and IWAE − VAE paired, per architecture."""
    cells = _cells_at_budget(rows)
    lines = [
        "| layers | steps | seeds | " + " | ".join(name for _, _, name in SUMMARY_CELLS)
        + " | IWAE − VAE, k = 5 | IWAE − VAE, k = 50 |",
        "|---" * (len(SUMMARY_CELLS) + 5) + "|",
    ]  # fmt: skip
    for model in models(rows):
        budget = common_budget(rows, model)
        runs = [cells.get((model, k, o), []) for k, o, _ in SUMMARY_CELLS]
        seeds = sorted({len(r) for r in runs if r})
        seeds_text = f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
        nll = [mean_se([r["test_nll"] for r in cell]) or "not run" for cell in runs]
        gaps = []
        for claim in CLAIMS[:2]:  # IWAE-5 − VAE-5, IWAE-50 − VAE-50
            paired = combine(rows, log_p, claim.cells(model), budget)
            gaps.append(
                "not run" if paired is None
                else f"{signed(paired.diff)} ± {paired.se:.2f} ({paired.verdict(claim.sign)})"
            )  # fmt: skip
        lines.append(
            f"| {LAYERS.get(model, model)} | {budget:,} | {seeds_text} | "
            + " | ".join(nll + gaps) + " |"
        )  # fmt: skip
    return "\n".join(lines)


def points_table(rows: list[dict[str, Any]]) -> str:
    """Every cell at every measured point: mean ± SE over seeds of the runs.csv columns."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(*cell_of(r), r["step"])].append(r)
    lines = [
        "| layers | k | objective | steps | seeds | test NLL | train NLL | AIS NLL | "
        "active units | trained at |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, k, objective, step), runs in sorted(groups.items()):
        ais = [r["nll_ais"] for r in runs if r.get("nll_ais") is not None]
        commits = sorted({(r.get("commit") or "unknown")[:7] for r in runs})
        lines.append(
            f"| {LAYERS.get(model, model)} | {k} | {objective if k > 1 else 'either'} | "
            f"{step:,} | {len(runs)} | {mean_se([r['test_nll'] for r in runs])} | "
            f"{mean_se([r['train_nll'] for r in runs])} | {mean_se(ais)} | "
            f"{mean_se([r['active_units'] for r in runs], 1)} | {', '.join(commits)} |"
        )
    return "\n".join(lines)


def mean_se(values: list[float], digits: int = 2) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) / math.sqrt(len(values)):.{digits}f}"


def signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def blocks(rows: list[dict[str, Any]], log_p: LogP) -> dict[str, str]:
    """Every generated block of docs/reproduction.md, by marker name."""
    return {
        "table1": table1(rows),
        "claims": claims_table(rows, log_p),
        "statements": statements(rows, log_p),
        "points": points_table(rows),
    }
