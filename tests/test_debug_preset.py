"""debug=default / debug=fdr: a config checked end to end in seconds, leaving no result behind.

A debug run writes only under ``$TMPDIR/iwae-debug/`` (never outputs/ or multirun/, where a
report would read its metrics.json as a result) and evaluates at k=10 instead of 5000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from iwae.launch.resolvers import register_resolvers
from tests.helpers import CONF_DIR, ROOT


def _run(args: list[str], cwd, env_extra: dict[str, str], timeout: int = 240):
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_debug_default_runs_small_and_writes_only_to_a_throwaway_dir(tmp_path):
    cwd, scratch = tmp_path / "project", tmp_path / "scratch"
    cwd.mkdir()
    scratch.mkdir()
    # The preset alone: no data, eval or logger override (the default eval.k=5000 would take
    # about a minute here; the preset's k=10 a fraction of a second).
    proc = _run(["debug=default"], cwd, {"TMPDIR": str(scratch)}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert list(cwd.iterdir()) == []  # no outputs/, multirun/, wandb/ or csv/ in the project
    run_dirs = [p.parent for p in scratch.glob("iwae-debug/runs/*/*/metrics.json")]
    assert len(run_dirs) == 1, sorted(str(p) for p in scratch.rglob("*"))
    run_dir = run_dirs[0]
    hydra_cfg = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
    assert hydra_cfg.runtime.output_dir == str(run_dir)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval/k"] == 10  # the tiny evaluation, not the default k=5000
    assert metrics["train/steps"] == 5  # a few steps (limit_train_batches), not an epoch's 200
    assert "val/bound" in metrics  # validation still ran
    assert not any(key.startswith("test/bound_vs_k") for key in metrics)  # no bound_ks
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert not cfg.logger  # logger=none


def test_fast_dev_run_without_the_preset_skips_the_evaluation_and_metrics_json(tmp_path):
    run_dir = tmp_path / "run"
    args = ["+trainer.fast_dev_run=true", "logger=none", f"hydra.run.dir={run_dir}"]
    # Before, this ran the k=5000 evaluation (about a minute here) of a one-step model.
    proc = _run(args, ROOT, {}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/bound" in proc.stdout and "test/nll" not in proc.stdout
    assert not (run_dir / "metrics.json").exists()  # nothing a report could take for a result
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # the run did happen, in that dir


def _compose_with_hydra(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_debug_fdr_and_debug_sweeps_use_the_throwaway_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    cfg = _compose_with_hydra(["debug=fdr"])
    assert cfg.trainer.fast_dev_run is True
    assert cfg.eval.k == 10 and not cfg.logger  # inherited from debug=default
    # a sweep with a debug preset (-m) goes to the throwaway directory too, as does a run
    assert cfg.hydra.run.dir.startswith(f"{tmp_path}/iwae-debug/runs/")
    assert cfg.hydra.sweep.dir.startswith(f"{tmp_path}/iwae-debug/multirun/")


def test_debug_applies_on_top_of_an_experiment(monkeypatch):
    monkeypatch.delenv("TMPDIR", raising=False)  # unset: /tmp
    # table1_small sets logger=csv and eval.k=5000; debug comes later in the defaults list
    cfg = _compose_with_hydra(["experiment=table1_small", "debug=default"])
    assert cfg.hydra.runtime.choices.logger == "none" and not cfg.logger
    assert cfg.eval.k == 10 and cfg.trainer.limit_train_batches == 5
    assert cfg.hydra.run.dir.startswith("/tmp/iwae-debug/runs/")
    assert cfg.hydra.sweep.dir.startswith("/tmp/iwae-debug/multirun/")
