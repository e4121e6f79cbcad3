"""The reproduction study (`iwae.reports.reproduction`, `iwae.reports.miniature`): paired
differences against a direct computation, the committed CSVs, and the tables of
docs/reproduction.md regenerated from them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from iwae.errors import UserError
from iwae.reports import miniature, miniature_table2
from iwae.reports.reproduction import (
    evaluate_runs,
    load_points,
    page_blocks,
    report,
    summary_block,
)
from iwae.reports.study_files import (
    LOG_P_CSV,
    RUNS_CSV,
    TABLE2_CSV,
    merge_study,
    page_block,
    read_study,
    read_table2,
    write_page_blocks,
)
from tests.helpers import ROOT

DOCS = ROOT / "docs" / "reproduction"
PAGE = ROOT / "docs" / "reproduction.md"


def _point(model, k, objective, seed, ll, step=100, units=10) -> dict:
    return {
        "data": "d", "model": model, "k": k, "objective": objective, "seed": seed,
        "epoch": 1, "step": step, "test_ll_per_image": list(ll), "test_nll": -float(np.mean(ll)),
        "test_nll_stderr": 0.1, "train_nll": 1.0, "train_nll_stderr": 0.1,
        "active_units": units, "active_units_per_layer": str(units), "eval_k": 5000,
        "commit": "abc1234", "run": f"{model}/k{k}/{objective}/seed{seed}",
    }  # fmt: skip


def _study(rng, seeds=3, digits=40, step=100) -> list[dict]:
    """VAE-5, IWAE-5, VAE-50, IWAE-50 and k = 1, log p per seed and digit."""
    base = rng.normal(-100, 5, size=(seeds, digits))
    shift = {(1, "vae"): -0.5, (5, "vae"): 0.0, (5, "iwae"): 1.0, (50, "vae"): 0.1, (50, "iwae"): 2}
    points = []
    for (k, objective), s in shift.items():
        for seed in range(seeds):
            ll = base[seed] + s + rng.normal(0, 0.3, size=digits)
            points.append(_point("1_layer", k, objective, seed, ll, step))
    return points


def test_paired_combinations_match_a_direct_computation():
    points = _study(np.random.default_rng(0))
    points.append(_point("1_layer", 5, "iwae", 7, [-90.0] * 40))  # no VAE partner: left out
    rows = [dict(p) for p in points]
    log_p = {(p["run"], p["step"], "is"): p["test_ll_per_image"] for p in points}
    ll = {(p["k"], p["objective"], p["seed"]): np.array(p["test_ll_per_image"]) for p in points}
    claim = miniature.CLAIMS[-1]  # (IWAE-50 - IWAE-5) - (VAE-50 - VAE-5)
    paired = miniature.combine(rows, log_p, claim.cells("1_layer"), 100)
    nll = np.stack([
        -(ll[50, "iwae", s] - ll[5, "iwae", s]) + (ll[50, "vae", s] - ll[5, "vae", s])
        for s in range(3)
    ])  # fmt: skip
    per_digit = nll.mean(0)
    assert paired.seeds == 3 and paired.digits == 40
    assert paired.diff == pytest.approx(per_digit.mean())
    assert paired.se_digits == pytest.approx(per_digit.std(ddof=1) / math.sqrt(40))
    assert paired.se_seeds == pytest.approx(nll.mean(1).std(ddof=1) / math.sqrt(3))
    assert paired.diff == pytest.approx(-0.9, abs=0.3) and paired.verdict(-1) == "shown"
    assert paired.verdict(1) == "reversed" and paired.verdict(None) == "measured"
    k1 = miniature.combine(rows, log_p, miniature.CLAIMS[2].cells("1_layer"), 100)
    assert k1.diff == pytest.approx(-1.5, abs=0.2)  # IWAE-5 - k=1: the k = 1 run, either column


def test_a_difference_within_two_standard_errors_is_not_shown():
    paired = miniature.Paired(diff=-0.3, se_digits=0.1, se_seeds=0.2, seeds=3, digits=500)
    assert paired.se == 0.2 and paired.verdict(-1) == "not shown"
    assert miniature.Paired(-0.3, math.nan, math.nan, 1, 0).verdict(-1) == "no error bar"


def test_table1_fills_both_columns_at_k1_and_marks_cells_not_run():
    rows = _study(np.random.default_rng(1))
    table = miniature.table1(rows).splitlines()
    one = next(line for line in table if line.startswith("| 1 | 1 |"))
    assert one.split(" | ")[2] == one.split(" | ")[3] != "not run"  # the same k = 1 cell
    assert "[3 seeds]" in one and "86.76 (19)" in one  # with the paper's number beside it
    two = next(line for line in table if line.startswith("| 2 | 5 |"))
    assert two.count("not run") == 2


def test_table1_gives_two_layer_units_per_layer_as_the_paper_writes_them():
    ll = [-100.0] * 4
    rows = [_point("2_layer", 5, "vae", s, ll, units=100 + u) for s, u in enumerate((10, 13, 16))]
    for r, u in zip(rows, (10, 13, 16)):
        r["active_units_per_layer"] = f"100+{u}"
    line = next(x for x in miniature.table1(rows).splitlines() if x.startswith("| 2 | 5 |"))
    assert "(100+13) [3 seeds]" in line and "(17+5)" in line  # the paper's cell beside it
    rows[0]["active_units_per_layer"] = ""  # a row without the split: the mean total
    line = next(x for x in miniature.table1(rows).splitlines() if x.startswith("| 2 | 5 |"))
    assert "(113) [3 seeds]" in line


def test_since_is_the_first_step_from_which_the_claim_holds(tmp_path):
    rng = np.random.default_rng(2)
    points = []
    for step, gap in ((10, -3.0), (20, 2.0), (30, 2.0)):  # IWAE behind, then ahead
        for p in _study(rng, step=step):
            if p["objective"] == "iwae":
                p["test_ll_per_image"] = [v + gap for v in p["test_ll_per_image"]]
            points.append(p)
    rows = [dict(p) for p in points]
    log_p = {(p["run"], p["step"], "is"): p["test_ll_per_image"] for p in points}
    assert miniature.since(rows, log_p, miniature.CLAIMS[0], "1_layer", 30) == 20


def test_report_appends_a_block_and_replaces_a_run_measured_again(tmp_path):
    out = tmp_path / "out"
    points = _study(np.random.default_rng(3))
    merge_study(out, points[:6])
    merge_study(out, points[3:])  # rows 3-5 again, then the rest
    rows, log_p = read_study(out)
    assert sorted(r["run"] for r in rows) == sorted(p["run"] for p in points)
    assert len(log_p) == len(points)
    first = points[0]
    row = next(r for r in rows if r["run"] == first["run"])
    assert row["test_nll"] == pytest.approx(first["test_nll"], abs=1e-4)
    assert log_p[(first["run"], 100, "is")] == pytest.approx(first["test_ll_per_image"], abs=5e-4)
    for name in (RUNS_CSV, LOG_P_CSV):
        assert str(tmp_path) not in (out / name).read_text()


def test_page_blocks_are_replaced_and_a_missing_block_is_one_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n" + page_block("table1", "old") + "\nend\n")
    write_page_blocks(page, {"table1": "| new |"})
    assert page.read_text() == "intro\n" + page_block("table1", "| new |") + "\nend\n"
    with pytest.raises(UserError, match="claims"):
        write_page_blocks(page, {"claims": "x"})


def test_snapshot_measures_agree_with_mode_eval_and_name_the_training_commit(tmp_path):
    """The study's per-digit estimate and `python train.py mode=eval` are two routes to the
    same k-sample test NLL (same model, digits, k and seed): they must agree."""
    study = tmp_path / "study"
    run = study / "one_layer" / "seed0"
    common = ["logger=none", "data.split=[200,50,50]", "trainer.enable_progress_bar=false"]
    train = [
        sys.executable, "train.py", "callbacks=snapshots", "callbacks.snapshots.every_n_epochs=1",
        "schedule.epochs=2", "eval.enabled=false", "eval.val_k=5", "threads=1",
        f"hydra.run.dir={run}", *common,
    ]  # fmt: skip
    subprocess.run(train, cwd=ROOT, check=True, capture_output=True, timeout=300)
    evaluate_runs([run], k=20, chunk_size=20, train_images=30)
    points = load_points(study)
    assert [p["step"] for p in points] == [10, 20]
    assert all(len(p["test_ll_per_image"]) == 50 for p in points)
    assert {p["run"] for p in points} == {"one_layer/seed0"}  # relative to the study folder
    trained = json.loads((run / "metrics.json").read_text())["code/commit"]
    assert {p["commit"] for p in points} == {trained}
    ckpt = sorted((run / "checkpoints" / "snapshots").glob("*.ckpt"))[-1]
    evaluation = [
        sys.executable, "train.py", "mode=eval", f"ckpt_path={ckpt}", "eval.k=20",
        "eval.chunk_size=20", "threads=1", f"hydra.run.dir={tmp_path / 'eval'}", *common,
    ]  # fmt: skip
    subprocess.run(evaluation, cwd=ROOT, check=True, capture_output=True, timeout=300)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert points[-1]["test_nll"] == pytest.approx(metrics["test/nll"], rel=1e-6)
    assert points[-1]["active_units"] == metrics["test/active_units"]
    report(study, tmp_path / "out")
    rows, _ = read_study(tmp_path / "out")
    assert [r["step"] for r in rows] == [10, 20] and (
        tmp_path / "out" / "nll_vs_steps.png"
    ).is_file()


def test_the_docs_tables_are_the_committed_csvs():
    """Every generated table of docs/reproduction.md and the README's summary is what the
    committed CSVs give."""
    rows, _ = read_study(DOCS)
    assert rows, "docs/reproduction/runs.csv holds no study"
    page = PAGE.read_text()
    for name, body in page_blocks(DOCS).items():
        assert page_block(name, body) in page, f"docs/reproduction.md: the {name} table is stale"
    readme = (ROOT / "README.md").read_text()
    for name, body in summary_block(DOCS).items():
        assert page_block(name, body) in readme, f"README.md: the {name} table is stale"


def test_the_summary_gives_each_cell_and_the_paired_iwae_minus_vae():
    rows = _study(np.random.default_rng(2))
    log_p = {(r["run"], r["step"], "is"): r["test_ll_per_image"] for r in rows}
    rows = [r for r in rows if (r["k"], r["objective"]) != (50, "vae")]  # one cell not run
    line = miniature.summary(rows, log_p).splitlines()[2].split(" | ")
    iwae5 = [r["test_nll"] for r in rows if (r["k"], r["objective"]) == (5, "iwae")]
    assert line[5] == miniature.mean_se(iwae5) and line[6] == "not run"
    gap = miniature.combine(rows, log_p, miniature.CLAIMS[0].cells("1_layer"), 100)
    assert gap.diff < 0 and line[8] == f"{miniature.signed(gap.diff)} ± {gap.se:.2f} (shown)"
    assert line[9] == "not run |"


@pytest.mark.parametrize("folder", [DOCS, DOCS / "longer"], ids=["study", "longer"])
def test_every_committed_point_has_its_per_digit_values_and_commit(folder):
    rows, log_p = read_study(folder)
    assert rows, f"{folder} holds no study"
    table2 = read_table2(folder)
    study = {(r["run"], r["step"]) for r in rows}
    for r in table2:  # every fine-tuning run starts from a committed point
        assert (r["before_run"], r["before_step"]) in study, r["run"]
    for r in rows + table2:
        assert len(log_p[(r["run"], r["step"], "is")]) == 500, r["run"]
        assert r["commit"] and len(r["commit"]) >= 7, r["run"]
        assert not r["run"].startswith("/"), r["run"]
        ll = log_p[(r["run"], r["step"], "is")]
        assert -np.mean(ll) == pytest.approx(r["test_nll"], abs=1e-3)


def _table2_study(rng, digits=40):
    """Before models (k = 1 VAE, IWAE-50) and their four continuations, log p per digit."""
    before = [
        _point("1_layer", k, o, seed, rng.normal(-100, 5, size=digits), step=100)
        for k, o in ((1, "vae"), (50, "iwae"))
        for seed in range(3)
    ]  # fmt: skip
    shift = {
        ("vae", "iwae"): 2.0,
        ("vae", "vae"): 0.5,
        ("iwae", "vae"): -1.5,
        ("iwae", "iwae"): 0.2,
    }
    after = []
    for b in before:
        for (first, second), s in shift.items():
            if b["objective"] != first:
                continue
            k = 50 if second == "iwae" else 1
            for step, gain in ((20, s / 2), (40, s)):  # the table uses the last step, 40
                ll = np.array(b["test_ll_per_image"]) + gain + rng.normal(0, 0.3, size=digits)
                p = _point("1_layer", k, second, b["seed"], ll, step=step)
                p.update(run=f"table2/{first}_to_{second}/seed{b['seed']}",
                         before_run=b["run"], before_step=b["step"])  # fmt: skip
                after.append(p)
    return before, after


def test_table2_differences_match_a_direct_computation(tmp_path):
    before, after = _table2_study(np.random.default_rng(4))
    merge_study(tmp_path, before + after)
    rows, log_p = read_study(tmp_path)
    table2 = read_table2(tmp_path)
    assert {r["run"] for r in rows} == {p["run"] for p in before}  # Table 1 rows only
    assert len(table2) == len(after) and str(tmp_path) not in (tmp_path / TABLE2_CSV).read_text()
    found = miniature_table2.pairs(rows, table2)
    ll = {(p["run"], p["step"]): np.array(p["test_ll_per_image"]) for p in before + after}
    seeds = found[(("vae", 1), ("iwae", 50))]
    got = miniature_table2.after_minus_before(seeds, log_p)
    nll = np.stack([
        -ll[f"table2/vae_to_iwae/seed{s}", 40] + ll[f"1_layer/k1/vae/seed{s}", 100]
        for s in range(3)
    ])  # fmt: skip
    assert got.diff == pytest.approx(nll.mean(), abs=1e-3) and got.seeds == 3
    assert got.se_seeds == pytest.approx(nll.mean(1).std(ddof=1) / math.sqrt(3), abs=1e-3)
    control = found[(("vae", 1), ("vae", 1))]
    vs = miniature_table2.switch_minus_control(seeds, control, log_p)
    direct = np.mean([
        (-ll[f"table2/vae_to_iwae/seed{s}", 40] + ll[f"table2/vae_to_vae/seed{s}", 40]).mean()
        for s in range(3)
    ])  # fmt: skip
    assert vs.diff == pytest.approx(direct, abs=1e-3) and vs.diff == pytest.approx(-1.5, abs=0.3)
    claims = miniature_table2.claims_table(rows, table2, log_p)
    assert claims.count("| shown |") == 4  # both switches and both switch - control
    assert "86.76 (19) → 84.88 (22)" in miniature_table2.table2(rows, table2, log_p)
    only_switches = [r for r in table2 if "_to_vae/" not in r["run"] or "iwae_to" in r["run"]]
    partial = miniature_table2.table2(rows, only_switches, log_p)
    assert next(x for x in partial.splitlines() if "VAE (k = 1) → VAE" in x).count("not run")
    report(None, tmp_path)  # from the CSVs alone: the figures, Table 2's among them
    assert (tmp_path / "table2.png").is_file()


def test_a_finetuning_run_names_its_before_model_inside_the_study(tmp_path):
    study = tmp_path / "study"
    snaps = study / "one_layer" / "k1" / "vae" / "seed0" / "checkpoints" / "snapshots"
    snaps.mkdir(parents=True)
    before = _point("1_layer", 1, "vae", 0, [-100.0] * 4, step=120)
    (snaps / "last.eval.json").write_text(json.dumps(before))
    after_dir = study / "table2" / "vae_to_iwae" / "seed0" / "checkpoints" / "snapshots"
    after_dir.mkdir(parents=True)
    after = _point("1_layer", 50, "iwae", 0, [-99.0] * 4, step=40)
    after["init_from"] = str(snaps / "last.ckpt")
    (after_dir / "a.eval.json").write_text(json.dumps(after))
    points = {p["run"]: p for p in load_points(study)}
    moved = points["table2/vae_to_iwae/seed0"]
    assert (moved["before_run"], moved["before_step"]) == ("one_layer/k1/vae/seed0", 120)
    with pytest.raises(UserError, match="init_from"):
        load_points(study / "table2")  # its "before" model lies outside this study


def evaluated_study(tmp_path):
    """A study folder of evaluated snapshots (``*.eval.json``), as `evaluate_runs` leaves it."""
    study = tmp_path / "study"
    for i, point in enumerate(_study(np.random.default_rng(0), seeds=2, digits=5)):
        folder = study / point["run"] / "checkpoints" / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.eval.json").write_text(json.dumps(point))
    return study


def test_report_checks_the_study_and_pages_before_writing_anything(tmp_path):
    """A page without its blocks is refused before the CSVs, the page or a figure is
    written: the study folder's CSVs stay as they were."""
    study, out = evaluated_study(tmp_path), tmp_path / "out"
    page = tmp_path / "page.md"
    page.write_text("# a page without report blocks\n")
    with pytest.raises(UserError, match="needs one '<!-- report:table1 -->'"):
        report(study, out, page)
    assert not out.exists() and page.read_text() == "# a page without report blocks\n"
    report(study, out)  # the same study without the page: written
    assert len(read_study(out)[0]) == 10 and (out / "nll_vs_steps.png").is_file()


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_evaluate_with_nothing_to_evaluate_says_so_and_exits_2(tmp_path, capsys, where):
    from iwae.reports.reproduction import main

    folder = tmp_path / "study"
    if where == "empty":
        folder.mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(folder)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "nothing to evaluate" in err and str(folder) in err and "\n" not in err


# A row of each measured table in the docs whose data file is not committed: its section must
# say that it is a one-off measurement (the command, date, commit and machine are beside it).
ONE_OFF = {
    "evaluation.md": ["| test NLL, IS k=5000, 500 digits | 104.83", "| 101.13 ± 1.27 |"],
    "binarization.md": ["| fashion_mnist | dynamic |"],
    "objectives.md": ["| iwae k=50 | 124.59 ± 1.52 |", "| 1 | 0.506 | 0.695 |"],
}


@pytest.mark.parametrize("doc", sorted(ONE_OFF))
def test_measured_tables_without_a_data_file_say_they_are_one_off(doc):
    import re

    sections = re.split(r"\n(?=#{2,6} )", (ROOT / "docs" / doc).read_text())  # by heading
    for row in ONE_OFF[doc]:
        [section] = [s for s in sections if row in s]
        assert "one-off measurement" in " ".join(section.lower().split()), (doc, row)
        assert "commit `" in section and "2-core" in section, (doc, row)


def test_a_figure_that_fails_costs_no_study_file(tmp_path, monkeypatch, caplog):
    import logging

    from iwae.reports import reproduction

    def broken(*args):
        raise RuntimeError("no display")

    monkeypatch.setattr(reproduction, "_figures", broken)
    caplog.set_level(logging.WARNING)
    report(evaluated_study(tmp_path), tmp_path / "out")
    assert len(read_study(tmp_path / "out")[0]) == 10
    [warning] = caplog.records
    assert warning.getMessage().endswith("RuntimeError: no display")
