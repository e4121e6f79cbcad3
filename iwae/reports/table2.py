"""Burda et al.'s Table 2 from staged runs (``experiment=table2_small``, ``paper_table2``):
``python -m iwae.reports.table2 <sweep dir>``.

Each row pairs a run's ``switch_metrics.json`` (the model at the switch, written by
`iwae.training.finetune.SwitchEvaluation`) with its ``metrics.json`` (after fine-tuning).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iwae.errors import UserError, exit_on_user_error
from iwae.reports.files import read_json, regular_file_inside


def table2_rows(run_dirs: list[Path]) -> str:
    """A markdown table like Burda et al.'s Table 2 from staged runs' JSON outputs."""
    lines = [
        "| trained as | NLL before | active units before | fine-tuned as | NLL after "
        "| active units after | epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in sorted(run_dirs):
        before = read_json(run / "switch_metrics.json")
        after = read_json(run / "metrics.json")
        second = after["objective"].split("_to_")[-1]
        lines.append(
            f"| {before['objective']} k={before['k']} | {before['test/nll']:.2f} "
            f"± {before['test/nll_stderr']:.2f} | {before['test/active_units']} "
            f"| {second} k={after['k']} | {after['test/nll']:.2f} ± {after['test/nll_stderr']:.2f} "
            f"| {after['test/active_units']} | {before['epoch']} + "
            f"{after['train/epochs'] - before['epoch']} |"
        )
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``python -m iwae.reports.table2 <sweep dir>``: print the Table 2 rows of its runs."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a run or sweep directory")
    args = parser.parse_args(argv)
    root = args.sweep_dir
    switches = [p for p in root.rglob("switch_metrics.json") if regular_file_inside(p, root)]
    started = sorted({p.parent for p in switches})
    runs = [run for run in started if regular_file_inside(run / "metrics.json", root)]
    for run in sorted(set(started) - set(runs)):
        print(f"skipped (not finished): {run}", file=sys.stderr)
    if not runs:
        raise UserError(
            f"no finished staged run (switch_metrics.json + metrics.json) in {args.sweep_dir}"
        )
    print(table2_rows(runs))


if __name__ == "__main__":
    main()
