"""Checkpoint evaluation and the report, on one tiny real training run plus synthetic runs:
``mode=eval`` reproduces the run's test NLL, and the table reproduces every metrics.json."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from iwae.errors import UserError
from iwae.launch.eval_checkpoint import evaluate_checkpoint
from iwae.launch.run import train
from iwae.reports import figures, paper
from iwae.reports.curves import nll_curves, paper_curves
from iwae.reports.runs import (
    Run,
    best_run,
    best_runs,
    find_runs,
    panel,
    read_csv,
    selection_basis,
)
from iwae.reports.table1 import report, table1_markdown
from iwae.reports.wandb_report import log_to_wandb
from tests.helpers import TINY, compose_config

EVAL = ["eval.k=20", "eval.chunk_size=7", "eval.seed=3"]
RUN = [*TINY, "logger=csv", "data.split=[200,50,40]", *EVAL]  # 40 test images: chunks of 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny one-layer IWAE run, laid out as job 0 of a sweep (with .hydra/config.yaml)."""
    run_dir = tmp_path_factory.mktemp("sweep") / "0"
    cfg = compose_config(RUN, run_dir)
    metrics = train(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    return run_dir, metrics


def test_eval_mode_reproduces_the_training_runs_nll(trained, tmp_path):
    run_dir, train_metrics = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = ["mode=eval", f"ckpt_path={ckpt}", *EVAL, "eval.bound_ks=[1,20]"]
    cfg = compose_config(overrides, tmp_path)
    metrics = evaluate_checkpoint(cfg, tmp_path)
    assert metrics["test/nll"] == train_metrics["test/nll"]  # same weights, data, seed: exact
    # L_20 from the bound-vs-k pass draws the same stream as the NLL estimate: the same number
    assert metrics["test/bound_vs_k"][-1]["bound"] == pytest.approx(-metrics["test/nll"], abs=1e-9)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/nll", "eval/k", "test/active_units", "test/active_units_per_layer"):
        assert on_disk[key] == train_metrics[key]


def test_checkpoint_config_loads_weights_only(trained):
    ckpt = torch.load(trained[0] / "checkpoints" / "last.ckpt", weights_only=True)
    stored = ckpt["iwae_config"]
    assert isinstance(stored, dict) and stored["eval"]["k"] == 20
    json.dumps(stored)  # plain builtins only


def fake_run(root: Path, name: str, objective: str, k: int, nll: float, units: list[int]) -> dict:
    """A finished run as metrics.json alone (no config, no checkpoint)."""
    metrics = {
        "data": "digits",
        "binarization": "dynamic",
        "objective": objective,
        "k": k,
        "test/nll": nll,
        "test/nll_stderr": 1.0,
        "test/images": 40,
        "eval/k": 20,
        "test/active_units": sum(units),
        "test/active_units_per_layer": units,
    }
    (root / name).mkdir()
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_report_table_reproduces_every_metrics_json(trained, tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    shutil.copytree(trained[0], root / "0")
    fakes = {
        "1": fake_run(root, "1", "vae", 5, 101.23456, [7, 3]),
        "2": fake_run(root, "2", "iwae", 5, 99.5, [9, 4]),
        "3": fake_run(root, "3", "iwae", 50, 98.0, [10, 4]),
        "4": fake_run(root, "4", "iwae", 50, 97.0, [11, 5]),  # a second seed of one cell
    }
    paths = report(root, ks=[1, 4, 16], chunk_size=8)
    with open(root / "table1.csv") as f:
        rows = {r["run_dir"]: r for r in csv.DictReader(f)}
    for name, metrics in {"0": trained[1], **fakes}.items():
        assert float(rows[name]["test_nll"]) == metrics["test/nll"]
        assert int(rows[name]["k"]) == metrics["k"]
    table = (root / "table1.md").read_text()
    assert "| 2 | 5 | 101.23 ± 1.00 (7+3) | 99.50 ± 1.00 (9+4) |" in table
    # two seeds: their mean ± the standard error over the seeds, 0.707 / sqrt(2)
    assert "| 2 | 50 |  | 97.50 ± 0.50 (10+4, 11+5) [n=2] |" in table
    nll, units = trained[1]["test/nll"], trained[1]["test/active_units_per_layer"][0]
    stderr = trained[1]["test/nll_stderr"]
    assert f"| 1 | {trained[1]['k']} |  | {nll:.2f} ± {stderr:.2f} ({units}) |" in table
    assert "(paper)" not in table  # neither "digits" nor the bundled digits are the paper's
    for name in ("nll_vs_k", "learning_curves", "unit_variances", "bound_vs_k"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
    assert paths["report_html"] == root / "report.html"
    curve = json.loads((root / "0" / "bound_vs_k.json").read_text())["curve"]
    assert [row["k"] for row in curve] == [1, 4, 16]  # the best run with a checkpoint


def test_report_logs_to_wandb_only_when_runs_used_it(trained, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs = find_runs(trained[0])
    assert not log_to_wandb(runs, trained[0], [], {})
    runs[0].config["logger"] = {"wandb": {"project": "iwae-test", "offline": True}}
    assert log_to_wandb(runs, trained[0], [], {})


DOCS = Path(__file__).resolve().parent.parent / "docs" / "table1_small"


@pytest.mark.skipif(not (DOCS / "table1.csv").is_file(), reason="no committed small-scale run")
def test_committed_table_is_generated_from_its_csv_and_copied_into_the_docs():
    """The Table 1 numbers of docs/reproduction.md come from the committed report files, not
    from a keyboard."""
    table = (DOCS / "table1.md").read_text()
    assert table1_markdown(read_csv(DOCS / "table1.csv")) == table
    readme = (DOCS.parent / "reproduction.md").read_text()
    section = readme.split("## Results: Table 1 at small scale", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows and all(row in section.splitlines() for row in rows)


def row(data: str, layers: int, objective: str, k: int, nll: float, **extra) -> dict:
    """A table1.csv row as `read_csv` returns it."""
    units = "+".join(["10"] * layers)
    return {
        "data": data,
        "binarization": extra.pop("binarization", "dynamic"),
        "layers": layers,
        "objective": objective,
        "k": k,
        "test_nll": nll,
        "test_nll_stderr": 0.25,
        "active_units_per_layer": units,
        "eval_k": 5000,
        "test_images": 100,
        **extra,
    }


def test_table_shows_the_papers_numbers_only_for_the_papers_data():
    rows = [row(d, 2, o, 50, 90.0) for d in ("mnist", "fashion_mnist") for o in ("vae", "iwae")]
    rows.append(row("omniglot", 1, "iwae", 5, 110.0, binarization="fixed"))  # not as the paper
    table = table1_markdown(rows)
    mnist, rest = table.split("**mnist**")[1].split("**omniglot**")
    assert "| layers | k | VAE | IWAE | VAE (paper) | IWAE (paper) |" in mnist
    assert (
        "| 2 | 50 | 90.00 ± 0.25 (10+10) | 90.00 ± 0.25 (10+10) | 84.78 (17+5) | 82.90 (26+7) |"
        in (mnist)
    )
    assert "(paper)" not in rest and "(paper)" not in table.split("**mnist**")[0]
    assert "first layer + second layer" in table
    assert "first layer + second layer" not in table1_markdown([row("mnist", 1, "vae", 5, 90.0)])


def test_paper_values_need_the_papers_binarization():
    assert paper.paper_value("mnist", "dynamic", 1, "iwae", 50) == (84.78, "25")
    assert paper.paper_value("mnist", "fixed", 1, "iwae", 50) is None
    assert paper.paper_value("binarized_mnist", "fixed", 1, "iwae", 50) == (87.10, "")
    for data in ("mnist_subset", "fashion_mnist"):
        assert not paper.is_paper_data(data, "dynamic")


def fake_runs(val_bounds: list[float | None], nlls: list[float]) -> list[Run]:
    return [
        Run(
            Path(f"/sweep/{i}"),
            {"data": "mnist", "objective": "iwae", "k": 5, "test/nll": n}
            | ({"val/bound": v} if v is not None else {}),
        )
        for i, (v, n) in enumerate(zip(val_bounds, nlls))
    ]


def test_best_model_is_chosen_by_validation_bound_not_test_nll():
    runs = fake_runs([-95.0, -90.0, -99.0], [80.0, 85.0, 70.0])
    assert selection_basis(runs) == "val"
    assert best_run(runs).path.name == "1"  # the highest validation bound, not the lowest NLL
    assert best_runs(runs) == [runs[1]]
    untracked = fake_runs([None, None], [85.0, 80.0])
    assert selection_basis(untracked) == "test" and best_run(untracked).path.name == "1"


def captured(monkeypatch) -> list:
    """The figures that `figures._save` is given, instead of writing them."""
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.append(fig) or Path(path))
    return saved


def test_nll_vs_k_ticks_the_trained_k_and_draws_errors_and_the_paper(monkeypatch, tmp_path):
    saved = captured(monkeypatch)
    rows = [row("mnist", 1, o, k, 90.0 - k / 10) for o in ("vae", "iwae") for k in (1, 5, 50)]
    figures.nll_vs_k(nll_curves(rows), tmp_path / "f.png", paper_curves(rows))
    ax = saved[0].axes[0]
    assert list(ax.get_xticks()) == [1, 5, 50]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "50"]
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 2  # VAE and IWAE, each with its error bars
    assert bars[0].lines[0].get_color() != bars[1].lines[0].get_color()
    assert bars[0].lines[0].get_linestyle() != bars[1].lines[0].get_linestyle()
    grey = [line for line in ax.lines if line.get_label().startswith("paper:")]
    assert sorted(line.get_ydata()[-1] for line in grey) == [84.78, 86.35]  # k = 50
    assert all(line.get_color() == "0.6" for line in grey)


def test_bound_vs_k_says_its_bars_are_two_standard_errors(monkeypatch, tmp_path):
    saved = captured(monkeypatch)
    curve = [{"k": k, "bound": -90.0 + k / 100, "mc_stderr": 0.1} for k in (1, 5, 50)]
    figures.bound_vs_k(curve, tmp_path / "b.png", "title")
    ax = saved[0].axes[0]
    assert "2 standard errors" in ax.get_legend().get_texts()[0].get_text()
    (bars,) = ax.containers
    top = bars.lines[2][0].get_segments()[0][1][1]  # the upper end of the first bar
    assert top == pytest.approx(-90.0 + 0.01 + 0.2)


def test_report_says_why_learning_curves_are_missing(tmp_path, capsys):
    fake_run(tmp_path, "0", "iwae", 5, 99.0, [9, 4])
    paths = report(tmp_path, checkpoints=False)
    out = capsys.readouterr().out
    assert "learning_curves" not in paths
    assert "learning_curves.png: not drawn: no run has a CSV log" in out
    assert "bound_vs_k.png: not drawn: --no-checkpoints" in out


class RecordingLogger:
    """Stands in for WandbLogger: records how it was built and what was logged."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        self.made.append(kwargs)
        self.experiment = type("E", (), {"finish": lambda self: None})()

    def log_image(self, **kwargs):
        pass

    def log_table(self, **kwargs):
        pass


def test_report_run_joins_the_sweeps_wandb_group(tmp_path, monkeypatch):
    import pytorch_lightning.loggers

    monkeypatch.setattr(pytorch_lightning.loggers, "WandbLogger", RecordingLogger)
    root = tmp_path / "multirun" / "2026-11-24" / "20-37-38"
    root.mkdir(parents=True)
    fake_run(root, "0", "iwae", 5, 99.0, [9, 4])
    runs = find_runs(root)
    # Hydra's own .hydra/config.yaml keeps the interpolation: the group comes from the path
    runs[0].config["logger"] = {"wandb": {"offline": True, "group": "${iwae.sweep_group:}"}}
    assert log_to_wandb(runs, root, [], {})
    assert RecordingLogger.made[-1]["group"] == "2026-11-24/20-37-38"
    runs[0].config["logger"]["wandb"]["group"] = "my-sweep"  # a resolved config names it
    assert log_to_wandb(runs, root, [], {})
    assert RecordingLogger.made[-1]["group"] == "my-sweep"


def with_model(root: Path, name: str, model: dict, choice: str | None = None) -> None:
    """Give fake run ``name`` a Hydra config naming its network (and its model choice)."""
    (root / name / ".hydra").mkdir()
    (root / name / ".hydra" / "config.yaml").write_text(json.dumps({"model": model}))
    if choice is not None:
        metrics = json.loads((root / name / "metrics.json").read_text())
        (root / name / "metrics.json").write_text(json.dumps({**metrics, "model": choice}))


def test_another_network_gets_rows_of_its_own(tmp_path):
    """One latent layer each: the MLP, model=conv and a plug-in network are three rows, never
    one cell averaged over them."""
    fake_run(tmp_path, "0", "iwae", 5, 99.0, [9])
    fake_run(tmp_path, "1", "iwae", 5, 95.0, [12])
    fake_run(tmp_path, "2", "iwae", 5, 97.0, [11])
    with_model(
        tmp_path, "0", {"_target_": "iwae.model.IWAEModel", "latent_dims": [50]}, "one_layer"
    )
    with_model(tmp_path, "1", {"_target_": "iwae.conv.ConvModel", "latent_dims": [50]}, "conv")
    with_model(tmp_path, "2", {"_target_": "mynet.ResNetVAE", "latent_dims": [50]}, "custom")
    report(tmp_path, checkpoints=False)
    table = (tmp_path / "table1.md").read_text()
    assert "| model | layers | k | IWAE |" in table
    assert "| MLP | 1 | 5 | 99.00 ± 1.00 (9) |" in table
    assert "| conv | 1 | 5 | 95.00 ± 1.00 (12) |" in table
    assert "| ResNetVAE | 1 | 5 | 97.00 ± 1.00 (11) |" in table
    assert "[n=" not in table
    rows = {r["run_dir"]: r["architecture"] for r in read_csv(tmp_path / "table1.csv")}
    assert rows == {"0": "", "1": "conv", "2": "ResNetVAE"}
    assert table1_markdown(read_csv(tmp_path / "table1.csv")) == table  # redrawn from the CSV
    runs = find_runs(tmp_path)  # the sample grids' best models and the figure panels too
    assert sorted(r.path.name for r in best_runs(runs, "test")) == ["0", "1", "2"]
    assert {panel(r) for r in runs} == {
        "digits, 1 layer",
        "digits, conv, 1 layer",
        "digits, ResNetVAE, 1 layer",
    }


def test_a_refused_folder_gets_no_report_file(tmp_path):
    """Every checkpoint is read before anything is written: one that is refused leaves the
    folder as it was."""
    fake_run(tmp_path, "0", "iwae", 5, 99.0, [9])
    (tmp_path / "0" / "checkpoints").mkdir()
    (tmp_path / "0" / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError):
        report(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_figure_that_fails_is_one_line_after_the_tables(tmp_path, monkeypatch, capsys):
    fake_run(tmp_path, "0", "iwae", 5, 99.0, [9])

    def broken(*args, **kwargs):
        raise RuntimeError("no font\nmore")

    monkeypatch.setattr(figures, "nll_vs_k", broken)
    paths = report(tmp_path, checkpoints=False)
    assert (tmp_path / "table1.md").is_file() and (tmp_path / "table1.csv").is_file()
    assert "nll_vs_k" not in paths
    assert "nll_vs_k.png: not drawn: RuntimeError: no font\n" in capsys.readouterr().out
