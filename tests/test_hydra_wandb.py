"""W&B runs carry the run's config and media; the pre-check never rejects what Hydra
accepts; ``mode=eval`` honours ``data=`` and refuses what the checkpoint fixes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from iwae.launch.assembly import progress_bar_enabled
from iwae.launch.cli import CONF_DIR, check_overrides, hydra_overrides
from iwae.launch.config_check import check_override_keys
from iwae.launch.resolvers import register_resolvers
from tests.helpers import TINY, TRAIN, run_train, train_env, wandb_config_item, wandb_run_files


def precheck(argv: list[str]) -> str | None:
    overrides = hydra_overrides(argv)
    if overrides is None:
        return None
    return check_overrides(argv) or check_override_keys(overrides, CONF_DIR)


@pytest.mark.parametrize(
    "argv",
    [
        ["logger=[csv,wandb]"],
        ["hydra/launcher=basic"],
        ["hydra/launcher=submitit_local"],
        ["-sc", "install=bash"],
        ["-m", "k=interval(1,5)"],
        ["-m", "k=range(1,3)", "objective=choice(vae,iwae)"],
        ["-m", "optimizer.lr=tag(log,interval(1e-4,1e-2))"],
        ["--info", "config"],
        ["--cfg", "job", "k=7"],
    ],
)
def test_precheck_accepts_what_hydra_accepts(argv: list[str]) -> None:
    assert precheck(argv) is None


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["logger=[csv,wnadb]"], "unknown logger 'wnadb'; choose one of: csv, mlflow, none,"),
        (["-m", "objective=choice(vae,bogus)"], "unknown objective 'bogus'"),
        (["hydra/launcher=joblb"], "unknown hydra/launcher 'joblb'; choose one of: basic,"),
        (["-m", "kk=interval(1,5)"], "unknown config key 'kk' (did you mean k?)"),
    ],
)
def test_precheck_still_catches_mistakes_in_one_line(argv: list[str], expected: str) -> None:
    message = precheck(argv)
    assert message is not None and "\n" not in message and expected in message, message


def test_hydra_itself_composes_list_values_and_plugin_launchers() -> None:
    """What the pre-check lets through, Hydra composes (the two agree)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["logger=[csv,wandb]"])
        assert set(cfg.logger) == {"csv", "wandb"}
        hydra_cfg = compose("config", ["hydra/launcher=submitit_local"], return_hydra_config=True)
        assert "submitit" in hydra_cfg.hydra.launcher._target_


def test_shell_completion_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TRAIN), "-sc", "install=bash"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "complete" in proc.stdout and "error:" not in proc.stderr


def test_wandb_and_csv_together_carry_config_and_media(tmp_path: Path) -> None:
    """``logger=[csv,wandb]``: both loggers; W&B's run config has the choices at the top and
    its media the sample grid and the bound-vs-k table; the CSV logger's hparams.yaml too."""
    run = tmp_path / "run"
    args = ["logger=[csv,wandb]", "objective=iwae", "k=5", "eval.bound_ks=[1,5]", *TINY]
    run_train([*args, f"hydra.run.dir={run}"], tmp_path, 300)
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert list(hparams)[:3] == ["objective", "model", "data"]
    assert hparams["objective"] == "iwae" and hparams["k"] == 5 and hparams["lr"] == 1e-3
    assert hparams["config"]["optimizer"]["lr"] == 1e-3
    (run_file,) = wandb_run_files(run)
    data = run_file.read_bytes()
    for key, value in [("objective", '"iwae"'), ("model", '"one_layer"'), ("k", "5")]:
        assert wandb_config_item(key, value) in data, key
    files = run_file.parent / "files" / "media"
    assert len(list(files.glob("images/samples_*.png"))) == 1
    assert list(files.glob("table/test/bound_vs_k*.table.json"))
    assert (run / "csv" / "metrics.csv").is_file()


def test_progress_bar_default_follows_the_terminal_and_the_launcher(monkeypatch) -> None:
    import iwae.launch.assembly as assembly

    assert progress_bar_enabled(True) is True and progress_bar_enabled(False) is False
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(assembly, "parallel_sweep_job", lambda: False)
    assert progress_bar_enabled(None) is True
    monkeypatch.setattr(assembly, "parallel_sweep_job", lambda: True)
    assert progress_bar_enabled(None) is False  # joblib's jobs would share one line
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.setattr(assembly, "parallel_sweep_job", lambda: False)
    assert progress_bar_enabled(None) is False  # a log file gets no bar refreshes


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    run = root / "run"
    run_train([*TINY, "logger=none", f"hydra.run.dir={run}"], root, 300)
    return run / "checkpoints" / "last.ckpt"


def eval_run(ckpt: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["mode=eval", f"ckpt_path={ckpt}", "eval.k=10", *extra]
    tmp_path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(TRAIN), *args, f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=tmp_path,
        env=train_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("override", ["model=two_layer", "k=50", "objective=vae"])
def test_mode_eval_refuses_what_the_checkpoint_fixes(trained, tmp_path, override) -> None:
    proc = eval_run(trained, tmp_path, override)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and f"so {override} would be ignored" in line, line
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_mode_eval_scores_other_data_on_purpose_and_records_it(trained, tmp_path) -> None:
    base = eval_run(trained, tmp_path / "a")
    other = eval_run(trained, tmp_path / "b", "data.split_seed=7", "data.split=[200,50,80]")
    assert base.returncode == 0 and other.returncode == 0, other.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "eval" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "eval" / "metrics.json").read_text())
    assert "eval/data" not in a and a["test/images"] == 50
    assert b["eval/data"] == "mnist_subset" and b["data"] == "mnist_subset"
    assert b["eval/data_overrides"] == ["data.split_seed=7", "data.split=[200,50,80]"]
    assert b["test/images"] == 80 and b["test/nll"] != a["test/nll"]
