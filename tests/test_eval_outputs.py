"""What ``mode=eval`` writes and reads: AIS and BDMC keys, log_likelihoods.csv, a directory of
its own beside a training run's files, and the run's own stored settings."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from iwae.errors import UserError
from iwae.launch import eval_checkpoint
from iwae.launch.eval_checkpoint import evaluate_checkpoint, own_output_dir
from tests.helpers import TINY, compose_config, file_digest, no_wandb_env, run_train

AIS = ["eval.ais.steps=40", "eval.ais.chains=4", "eval.ais.leapfrog=4", "eval.ais.images=20"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A TINY training run (1 epoch, 200 digits, 50 test digits) in its own directory."""
    run_dir = tmp_path_factory.mktemp("trained")
    run_train([*TINY, "logger=none", "threads=1"], env=no_wandb_env(), run_dir=run_dir)
    return run_dir


def _evaluate(run_dir: Path, out: Path, *extra: str) -> dict:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_config(["mode=eval", f"ckpt_path={ckpt}", "logger=none", *extra], out)
    return evaluate_checkpoint(cfg, out)


def test_ais_is_tighter_than_importance_sampling_and_reproducible(trained, tmp_path):
    """On a trained model, AIS's log p(x) estimate is above the k=20 IS bound beyond the
    standard error of the paired difference; the same seed gives the same numbers."""
    a = _evaluate(trained, tmp_path / "a", *AIS, "eval.per_image=true", "eval.k=20")
    assert a["test/ais_images"] == 20 and a["eval/ais"]["steps"] == 40
    assert a["test/ais_minus_is"] > 2 * a["test/ais_minus_is_stderr"] > 0
    assert a["test/nll_ais"] < a["test/nll"] and a["test/nll_ais_stderr"] > 0
    on_disk = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert on_disk["test/nll_ais"] == a["test/nll_ais"]
    b = _evaluate(trained, tmp_path / "b", *AIS, "eval.k=20")
    assert b["test/nll_ais"] == a["test/nll_ais"] and b["test/nll"] == a["test/nll"]
    assert not (tmp_path / "b" / "log_likelihoods.csv").exists()  # only when asked


def test_per_image_csv_has_a_row_per_test_image(trained, tmp_path):
    metrics = _evaluate(trained, tmp_path, *AIS, "eval.per_image=true", "eval.k=20")
    with (tmp_path / "log_likelihoods.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(metrics["test/images"]))
    log_p_is = torch.tensor([float(r["log_p_is"]) for r in rows], dtype=torch.float64)
    assert -log_p_is.mean().item() == pytest.approx(metrics["test/nll"], abs=1e-12)
    ais = [float(r["log_p_ais"]) for r in rows if r["log_p_ais"]]
    assert len(ais) == 20 and -sum(ais) / 20 == pytest.approx(metrics["test/nll_ais"], abs=1e-9)


def test_bdmc_keys(trained, tmp_path):
    m = _evaluate(trained, tmp_path, "eval.k=5", "eval.bdmc.images=6", "eval.bdmc.steps=20")
    assert m["bdmc/lower"] <= m["bdmc/upper"]
    assert m["bdmc/gap"] == pytest.approx(m["bdmc/upper"] - m["bdmc/lower"])
    assert m["bdmc/images"] == 6 and math.isfinite(m["bdmc/lower"])
    assert all(m[f"bdmc/{b}_stderr"] > 0 for b in ("lower", "upper", "gap"))


def test_eval_into_a_training_run_leaves_its_files_byte_identical(trained):
    files = [p for p in trained.rglob("*") if p.is_file() and "eval" not in p.parts]
    assert {"metrics.json", "samples.png", "train.log", "config.yaml"} <= {p.name for p in files}
    before = {p: file_digest(p) for p in files}
    ckpt = trained / "checkpoints" / "last.ckpt"
    proc = run_train(
        ["mode=eval", f"ckpt_path={ckpt}", "logger=none", "eval.k=5", "threads=1"],
        env=no_wandb_env(),
        run_dir=trained,
    )
    assert {p: file_digest(p) for p in files} == before
    (evaluation,) = (trained / "eval").iterdir()
    assert "eval/ckpt_path" in json.loads((evaluation / "metrics.json").read_text())
    assert (evaluation / ".hydra" / "config.yaml").is_file()
    assert f"this evaluation writes to {evaluation}" in proc.stderr
    with pytest.raises(UserError, match="is a training run's directory"):  # in-process too
        _evaluate(trained, trained, "eval.k=5")


def test_own_output_dir_leaves_other_command_lines_alone(trained, tmp_path):
    argv = ["mode=eval", f"hydra.run.dir={tmp_path}"]
    assert own_output_dir(argv) == argv  # not a training run's directory
    argv = ["mode=train", f"hydra.run.dir={trained}"]
    assert own_output_dir(argv) == argv  # training (a resume) writes there on purpose
    moved = own_output_dir(["mode=eval", f"hydra.run.dir={trained}", "eval.k=5"])
    assert moved[1].startswith(f"hydra.run.dir={trained / 'eval'}/") and moved[2] == "eval.k=5"


def _stored_copy(trained: Path, tmp_path: Path, **changes: object) -> Path:
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["iwae_config"].update(changes)
    path = tmp_path / "changed.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("stored", [True, False])
def test_eval_uses_the_runs_flush_denormal(trained, tmp_path, monkeypatch, stored):
    calls = []
    monkeypatch.setattr(eval_checkpoint, "set_flush_denormal", calls.append)
    ckpt = _stored_copy(trained, tmp_path, flush_denormal=stored)
    cfg = compose_config(["mode=eval", f"ckpt_path={ckpt}", "eval.k=2"], tmp_path / "out")
    evaluate_checkpoint(cfg, tmp_path / "out")
    assert calls == [stored]


@pytest.mark.parametrize(
    "key, value", [("threads", "4"), ("seed", -1), ("k", "5"), ("flush_denormal", "yes")]
)
def test_bad_stored_values_get_one_line_and_no_result(trained, tmp_path, key, value):
    ckpt = _stored_copy(trained, tmp_path, **{key: value})
    out = tmp_path / "out"
    cfg = compose_config(["mode=eval", f"ckpt_path={ckpt}", "eval.k=2"], out)
    with pytest.raises(UserError) as err:
        evaluate_checkpoint(cfg, out)
    message = str(err.value)
    assert "\n" not in message and "stores a bad run config" in message and key in message
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("eval.ais.steps=-1", "eval.ais.steps must be an integer >= 0"),
        ("eval.ais.chains=0", "eval.ais.chains must be an integer >= 1"),
        ("eval.ais.step_size=0", "eval.ais.step_size must be a number > 0"),
        ("eval.ais.target_accept=1.5", "eval.ais.target_accept must be a number in (0, 1)"),
    ],
)
def test_mode_eval_refuses_bad_ais_values_before_any_work(trained, tmp_path, override, expected):
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        _evaluate(trained, out, "eval.ais.steps=5", override)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_reproduction_pairs_the_per_image_csv_of_an_evaluation(tmp_path):
    """The study reads a mode=eval's log_likelihoods.csv of the same checkpoint, k and seed,
    and pairs AIS estimates digit by digit on the digits both runs have."""
    from iwae.reports.miniature import combine
    from iwae.reports.reproduction import per_image_csv

    ckpt = tmp_path / "run" / "checkpoints" / "snapshots" / "epoch=1.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    evaluation = tmp_path / "run" / "eval" / "2026-01-01_00-00-00"
    evaluation.mkdir(parents=True)
    metrics = {"eval/ckpt_path": str(ckpt), "eval/k": 20, "eval/seed": 0}
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    (evaluation / "log_likelihoods.csv").write_text(
        "index,log_p_is,log_p_ais\n0,-90.5,-89.0\n1,-80.25,\n"
    )
    assert per_image_csv(ckpt, 21, 0) is None  # another k: not the same numbers
    is_ll, ais_ll = per_image_csv(ckpt, 20, 0)
    assert is_ll.tolist() == [-90.5, -80.25] and ais_ll.tolist() == [-89.0]
    common = {"model": "1_layer", "k": 5, "step": 10, "seed": 0}
    rows = [{**common, "objective": o, "run": o} for o in ("vae", "iwae")]
    log_p = {
        ("vae", 10, "is"): [-92.0, -81.0], ("vae", 10, "ais"): [-90.0],
        ("iwae", 10, "is"): [-90.5, -80.25], ("iwae", 10, "ais"): [-89.0, -79.0],
    }  # fmt: skip
    terms = [(("1_layer", 5, "iwae"), 1), (("1_layer", 5, "vae"), -1)]
    paired = combine(rows, log_p, terms, 10)
    assert paired.diff == pytest.approx(-1.125) and paired.digits == 2
    ais = combine(rows, log_p, terms, 10, "ais")
    assert ais.diff == pytest.approx(-1.0) and ais.digits == 1
