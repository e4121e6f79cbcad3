"""hparams_search=iwae_optuna: an Optuna study that scores each trial on validation, never on test.

train.py (and the fused launcher) return -val/bound to the sweeper; Optuna minimises it and
writes the best trial to ``<sweep dir>/optimization_results.yaml``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT, TINY

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason='hydra-optuna-sweeper is not installed (pip install -e ".[search]")',
)

RUN = [*TINY, "logger=none"]


def _trials(sweep_dir) -> list[dict]:
    """Each trial's directory, composed config and metrics, in job order."""
    dirs = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [
        {
            "dir": d,
            "cfg": OmegaConf.load(d / ".hydra" / "config.yaml"),
            "metrics": json.loads((d / "metrics.json").read_text()),
        }
        for d in dirs
    ]


# The fused launcher returns the sweeper's value itself (hydra_plugins/iwae_fused_launcher), so
# both launchers must hand Optuna the same validation quantity.
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=fused"]], ids=["basic", "fused"])
def test_two_trial_study_minimises_the_validation_negative_bound(tmp_path, launcher):
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=iwae_optuna",  # the search space comes from the preset's YAML
        "hydra.sweeper.n_trials=2",
        *launcher,
        *RUN,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    trials = _trials(sweep_dir)
    assert [t["dir"].name for t in trials] == ["0", "1"]  # n_trials=2: two runs, no more
    for t in trials:
        # the preset's search space reached each run's config, and the run trained with it
        assert 1e-4 <= t["cfg"].optimizer.lr <= 3e-3
        assert t["cfg"].k in (1, 5, 50) and t["metrics"]["k"] == t["cfg"].k
        assert t["metrics"]["objective"] == "iwae"
    # TPE's first trials are random: two distinct learning rates show Optuna proposed them
    assert trials[0]["cfg"].optimizer.lr != trials[1]["cfg"].optimizer.lr

    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    scores = [-t["metrics"]["val/bound"] for t in trials]
    best = min(range(2), key=lambda i: scores[i])  # minimised: the tightest validation bound
    assert results.best_value == pytest.approx(scores[best], rel=1e-12)
    assert results.best_params["k"] == trials[best]["cfg"].k
    assert results.best_params["optimizer.lr"] == pytest.approx(trials[best]["cfg"].optimizer.lr)
    # the study never saw a test number: its best value is no trial's test NLL
    for t in trials:
        assert results.best_value != pytest.approx(t["metrics"]["test/nll"], rel=1e-6)


def test_a_plugin_bounds_own_setting_is_searched_and_an_untrusted_one_refused(tmp_path):
    """The researcher's bound (examples/tempered_bound) with its own config file: Optuna
    searches its temperature like any key; without ``plugins=`` no trial runs."""
    example = ROOT / "examples" / "tempered_bound"
    env = {**os.environ, "PYTHONPATH": str(example), "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=iwae_optuna",
        "hydra.sweeper.n_trials=2",
        "objective=tempered",
        f"hydra.searchpath=[file://{example / 'conf'}]",
        "+hydra.sweeper.params.objective.temperature=interval(0.0,1.0)",
        *RUN,
    ]
    refused = tmp_path / "refused"
    proc = subprocess.run(
        [*cmd, f"hydra.sweep.dir={refused}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "plugins=[mybound]" in proc.stderr
    assert not refused.exists() or not any(p.name.isdigit() for p in refused.iterdir())

    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [*cmd, "plugins=[mybound]", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(sweep_dir)
    temperatures = [t["cfg"].objective.temperature for t in trials]
    assert len(trials) == 2 and len(set(temperatures)) == 2  # proposed by Optuna, not 0.5
    assert all(0 <= t <= 1 and t != 0.5 for t in temperatures)
    assert all(t["metrics"]["objective"] == "tempered" for t in trials)
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = min(trials, key=lambda t: -t["metrics"]["val/bound"])
    assert results.best_params["objective.temperature"] == best["cfg"].objective.temperature
