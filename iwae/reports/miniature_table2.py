"""Table 2 in miniature: the fine-tuning tables of ``docs/reproduction.md``, from the study's
committed CSVs alone (``table2_runs.csv`` beside ``runs.csv``, `iwae.reports.study_files`).

A fine-tuning run continues a model of the study (its ``before_run`` at ``before_step``) with
the other objective (the *switch*: VAE -> IWAE-50, IWAE-50 -> VAE) or with its own (the
*control*, which separates the switch from the extra training). Every difference is paired by
seed and test digit as in `iwae.reports.miniature`: after - before (the paper's Table 2) and
switch - control (what the paper, with no control, could not separate).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from iwae.reports.miniature import Paired, mean_se, paired, signed
from iwae.reports.paper import PAPER_TABLE2
from iwae.reports.study_files import LogP

Model = tuple[str, int]  # (objective, k); k = 1 is "vae" whichever objective trained it
Pair = tuple[dict[str, Any], dict[str, Any]]  # (before row, after row) of one seed
Rows = list[dict[str, Any]]


def model_of(row: dict[str, Any]) -> Model:
    return ("vae", 1) if row["k"] == 1 else (row["objective"], int(row["k"]))


@dataclass(frozen=True)
class Switch:
    before: Model
    after: Model
    sign: int | None  # the paper's direction of after - before; None: a control
    meaning: str

    @property
    def name(self) -> str:
        return f"{_label(self.before)} → {_label(self.after)}"


VAE, IWAE = ("vae", 1), ("iwae", 50)
SWITCHES = [
    Switch(VAE, IWAE, -1, "continuing a VAE as an IWAE improves it"),
    Switch(VAE, VAE, None, "control: the same extra steps as a VAE"),
    Switch(IWAE, VAE, 1, "continuing an IWAE as a VAE makes it worse"),
    Switch(IWAE, IWAE, None, "control: the same extra steps as an IWAE"),
]
CONTROLLED = [  # (switch, control, the paper's direction of switch - control)
    (SWITCHES[0], SWITCHES[1], -1),
    (SWITCHES[2], SWITCHES[3], 1),
]


def _label(model: Model) -> str:
    return "VAE (k = 1)" if model == VAE else f"{model[0].upper()}-{model[1]}"


def pairs(rows: Rows, table2: Rows) -> dict[tuple[Model, Model], dict[int, Pair]]:
    """(before, after) rows by (trained as, continued as) and seed, each fine-tuning run at the
    last step it reached; runs whose "before" point is not in ``rows`` are left out."""
    study = {(r["run"], r["step"]): r for r in rows}
    last: dict[str, dict[str, Any]] = {}
    for r in table2:
        if r["run"] not in last or r["step"] > last[r["run"]]["step"]:
            last[r["run"]] = r
    found: dict[tuple[Model, Model], dict[int, Pair]] = defaultdict(dict)
    for after in last.values():
        before = study.get((after["before_run"], after["before_step"]))
        if before is not None:
            found[(model_of(before), model_of(after))][after["seed"]] = (before, after)
    return found


def _log_p(log_p: LogP, row: dict[str, Any], estimator: str) -> list[float] | None:
    return log_p.get((row["run"], row["step"], estimator))


def after_minus_before(seeds: dict[int, Pair], log_p: LogP, estimator: str = "is") -> Paired | None:
    terms = []
    for before, after in seeds.values():
        a, b = _log_p(log_p, after, estimator), _log_p(log_p, before, estimator)
        if a and b:
            terms.append([(a, 1), (b, -1)])
    return paired(terms) if terms else None


def switch_minus_control(
    switch: dict[int, Pair], control: dict[int, Pair], log_p: LogP, estimator: str = "is"
) -> Paired | None:
    terms = []
    for seed in sorted(set(switch) & set(control)):
        s = _log_p(log_p, switch[seed][1], estimator)
        c = _log_p(log_p, control[seed][1], estimator)
        if s and c:
            terms.append([(s, 1), (c, -1)])
    return paired(terms) if terms else None


def _steps(seeds: dict[int, Pair]) -> str:
    before = sorted({b["step"] for b, _ in seeds.values()})
    after = sorted({a["step"] for _, a in seeds.values()})
    return f"{'/'.join(f'{s:,}' for s in before)} + {'/'.join(f'{s:,}' for s in after)}"


def table2(rows: Rows, table2_rows: Rows, log_p: LogP) -> str:
    """The paper's Table 2 layout with the controls: NLL (k = 5000) and active units before
    and after, mean ± SE over seeds, and after - before paired by seed and digit."""
    found = pairs(rows, table2_rows)
    lines = [
        "| trained as → continued as | steps before + after | seeds | NLL before | NLL after "
        "| after − before (SE digits, seeds) | active units before → after "
        "| paper: NLL (units) before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for switch in SWITCHES:
        paper = PAPER_TABLE2.get((switch.before, switch.after))
        paper_text = "" if paper is None else (
            f"{paper[0][0]:.2f} ({paper[0][1]}) → {paper[1][0]:.2f} ({paper[1][1]})"
        )  # fmt: skip
        seeds = found.get((switch.before, switch.after), {})
        diff = after_minus_before(seeds, log_p)
        if not seeds or diff is None:
            lines.append(f"| {switch.name} | not run | | | | | | {paper_text} |")
            continue
        units = [mean_se([float(p[i]["active_units"]) for p in seeds.values()], 1) for i in (0, 1)]
        lines.append(
            f"| {switch.name} | {_steps(seeds)} | {len(seeds)} "
            f"| {mean_se([b['test_nll'] for b, _ in seeds.values()])} "
            f"| {mean_se([a['test_nll'] for _, a in seeds.values()])} | {diff.text()} "
            f"| {units[0]} → {units[1]} | {paper_text} |"
        )
    return "\n".join(lines)


def _claims(rows: Rows, table2_rows: Rows, log_p: LogP) -> list[tuple]:
    """(name, meaning, sign, paper difference, IS Paired, AIS Paired) for every claim measured."""
    found = pairs(rows, table2_rows)
    out = []
    for switch in SWITCHES:
        seeds = found.get((switch.before, switch.after), {})
        paper = PAPER_TABLE2.get((switch.before, switch.after))
        paper_diff = None if paper is None else paper[1][0] - paper[0][0]
        name = f"{switch.name}: after − before"
        diffs = [after_minus_before(seeds, log_p, estimator) for estimator in ("is", "ais")]
        out.append((name, switch.meaning, switch.sign, paper_diff, *diffs))
    for switch, control, sign in CONTROLLED:
        s = found.get((switch.before, switch.after), {})
        c = found.get((control.before, control.after), {})
        name = f"{switch.name} − {control.name}"
        meaning = "the switch, not the extra steps, " + ("helps" if sign < 0 else "hurts")
        diffs = [switch_minus_control(s, c, log_p, estimator) for estimator in ("is", "ais")]
        out.append((name, meaning, sign, None, *diffs))
    return out


def claims_table(rows: Rows, table2_rows: Rows, log_p: LogP) -> str:
    lines = [
        "| difference (meaning) | paper, full MNIST | these runs: IS, all test digits "
        "| AIS, first digits | seeds | at 2 SE |",
        "|---|---|---|---|---|---|",
    ]
    for name, meaning, sign, paper, diff, ais in _claims(rows, table2_rows, log_p):
        paper_text = "" if paper is None else signed(paper)
        if diff is None:
            lines.append(f"| {name} ({meaning}) | {paper_text} | not run | | | |")
            continue
        ais_text = "" if ais is None else f"{ais.text()} [{ais.digits}]"
        lines.append(
            f"| {name} ({meaning}) | {paper_text} | {diff.text()} | {ais_text} "
            f"| {diff.seeds} | {diff.verdict(sign)} |"
        )
    return "\n".join(lines)


def statements(rows: Rows, table2_rows: Rows, log_p: LogP) -> str:
    lines = []
    for name, meaning, sign, _, diff, _ in _claims(rows, table2_rows, log_p):
        if diff is None:
            continue
        se = "" if math.isnan(diff.se) else f" ± {diff.se:.2f}"
        lines.append(
            f"- {name}: **{diff.verdict(sign)}** ({meaning}): {signed(diff.diff)}{se} nats, "
            f"{diff.seeds} seed(s)."
        )
    return "\n".join(lines)


def blocks(rows: Rows, table2_rows: Rows, log_p: LogP) -> dict[str, str]:
    """The Table 2 blocks of docs/reproduction.md; none before any fine-tuning run is reported."""
    if not table2_rows:
        return {}
    return {
        "table2": table2(rows, table2_rows, log_p),
        "table2_claims": claims_table(rows, table2_rows, log_p),
        "table2_statements": statements(rows, table2_rows, log_p),
    }
