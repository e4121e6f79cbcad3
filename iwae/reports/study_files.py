"""The committed files of the reproduction study, ``docs/reproduction/``: what a later session
appends to and what every table and figure of ``docs/reproduction.md`` is generated from.

- ``runs.csv``: one row per run and measured point (a snapshot along training).
- ``table2_runs.csv``: the same for the fine-tuning runs of Table 2 in miniature, one row per
  run and point, each naming the run and step it started from (``before_run``,
  ``before_step``: a row of ``runs.csv``).
- ``test_log_p.csv``: the per-digit test log-likelihoods behind every row of both (IS with
  k = 5000 on every test digit; AIS on the first ``ais_images``), one row per run, point and
  estimator, so that two runs can be paired digit by digit from the committed files alone.

Run names are paths relative to the study folder (``one_layer/k5/iwae/seed0``): no machine
path is committed. Rows of a run measured again replace the old ones; other rows are kept, so
that each block of the study (one-layer cells, two-layer cells) is appended by its own report.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from iwae.errors import UserError
from iwae.training.outputs import write_text_atomic

RUNS_CSV, TABLE2_CSV, LOG_P_CSV = "runs.csv", "table2_runs.csv", "test_log_p.csv"
FIELDS = [
    "model", "k", "objective", "seed", "epoch", "step",
    "test_nll", "test_nll_stderr", "train_nll", "train_nll_stderr",
    "nll_ais", "nll_ais_stderr", "ais_images",
    "active_units", "active_units_per_layer", "eval_k", "data", "commit", "run",
]  # fmt: skip
TABLE2_FIELDS = [*FIELDS[:-1], "before_run", "before_step", "run"]
ESTIMATORS = {"is": "test_ll_per_image", "ais": "test_ll_ais_per_image"}
LogP = dict[tuple[str, int, str], list[float]]  # (run, step, estimator) -> log p per digit


def point_row(point: dict[str, Any], fields: list[str] = FIELDS) -> dict[str, Any]:
    """The CSV row of one evaluated point; the AIS mean and standard error are those of its
    per-digit AIS values (over the first ``ais_images`` test digits)."""
    row = {name: point.get(name) for name in fields}
    ais = point.get(ESTIMATORS["ais"])
    if ais:
        row["nll_ais"] = -statistics.fmean(ais)
        row["nll_ais_stderr"] = statistics.stdev(ais) / math.sqrt(len(ais))
        row["ais_images"] = len(ais)
    return row


def point_log_p(point: dict[str, Any]) -> LogP:
    return {
        (point["run"], int(point["step"]), name): list(point[field])
        for name, field in ESTIMATORS.items()
        if point.get(field)
    }


def read_study(out: Path) -> tuple[list[dict[str, Any]], LogP]:
    """(runs.csv rows with numbers as numbers, per-digit log p) of a study folder; empty if the
    folder has no study yet."""
    rows = [_typed(r) for r in _read_csv(out / RUNS_CSV)]
    return rows, _read_log_p(out)


def read_table2(out: Path) -> list[dict[str, Any]]:
    """The rows of ``table2_runs.csv``, numbers as numbers; empty if there is none."""
    return [_typed(r) for r in _read_csv(out / TABLE2_CSV)]


def _read_log_p(out: Path) -> LogP:
    log_p: LogP = {}
    for r in _read_csv(out / LOG_P_CSV, plain=False):
        run, step, estimator, *values = r
        log_p[(run, int(step), estimator)] = [float(v) for v in values if v != ""]
    return log_p


def merge_study(out: Path, points: list[dict[str, Any]]) -> None:
    """Write the points into ``out``'s CSVs, a fine-tuning run's (one with a ``before_run``)
    into table2_runs.csv: their runs' old rows are replaced, others kept."""
    new_runs = {p["run"] for p in points}
    for name, fields, mine in ((RUNS_CSV, FIELDS, False), (TABLE2_CSV, TABLE2_FIELDS, True)):
        new = [point_row(p, fields) for p in points if bool(p.get("before_run")) == mine]
        old = [r for r in _read_csv(out / name) if r["run"] not in new_runs]
        if new or old:
            _write_rows(out / name, fields, [_typed(r) for r in old] + new)
    log_p = {key: v for key, v in _read_log_p(out).items() if key[0] not in new_runs}
    for p in points:
        log_p.update(point_log_p(p))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    width = max((len(v) for v in log_p.values()), default=0)
    writer.writerow(["run", "step", "estimator", *range(width)])
    for (run, step, estimator), values in sorted(log_p.items()):
        writer.writerow([run, step, estimator, *(f"{v:.3f}" for v in values)])
    write_text_atomic(out / LOG_P_CSV, text.getvalue())


def _write_rows(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    rows.sort(key=lambda r: (r["model"], r["k"], r["objective"], r["seed"], r["run"], r["step"]))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fields)
    writer.writeheader()
    writer.writerows({k: _rounded(r.get(k)) for k in fields} for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text.getvalue())


def _read_csv(path: Path, plain: bool = True) -> list[Any]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f) if plain else csv.reader(f)
            if not plain:
                next(reader, None)  # the header
            return list(reader)
    except (csv.Error, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable CSV ({err}); delete it or restore it") from err


_INTS = ("k", "seed", "epoch", "step", "active_units", "ais_images", "eval_k", "before_step")


def _typed(row: dict[str, str]) -> dict[str, Any]:
    typed: dict[str, Any] = dict(row)
    for name, value in row.items():
        if value in ("", None):
            typed[name] = None
        elif name in _INTS:
            typed[name] = int(value)
        elif name.endswith(("_nll", "_stderr")) or name == "nll_ais":
            typed[name] = float(value)
    return typed


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def page_block(name: str, text: str) -> str:
    """``text`` between the markers that `write_page_blocks` replaces."""
    return f"<!-- report:{name} -->\n{text.strip()}\n<!-- /report:{name} -->"


def page_with_blocks(page: Path, blocks: dict[str, str], text: str | None = None) -> str:
    """``page``'s text (or ``text``) with each ``<!-- report:NAME -->...<!-- /report:NAME -->``
    block replaced; a one-line `UserError` if a block is missing, before anything is written."""
    text = page.read_text() if text is None else text
    for name, body in blocks.items():
        start, end = f"<!-- report:{name} -->", f"<!-- /report:{name} -->"
        if text.count(start) != 1 or text.count(end) != 1:
            raise UserError(
                f"{page} needs one '{start}' ... '{end}' block for the {name} table; add it"
            )
        head, rest = text.split(start)
        _, tail = rest.split(end)
        text = head + page_block(name, body) + tail
    return text


def write_page_blocks(page: Path, blocks: dict[str, str]) -> None:
    """Replace each ``<!-- report:NAME -->...<!-- /report:NAME -->`` block of ``page``."""
    write_text_atomic(page, page_with_blocks(page, blocks))
