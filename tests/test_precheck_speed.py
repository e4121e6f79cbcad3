"""The pre-check answers before torch and Lightning load, refuses what would end in a traceback
or an empty run directory, and reads a search space the way the Optuna sweeper does.

No timing is asserted here (the machine is shared): ``benchmarks/precheck.py`` measures the
wall time; this tests the cause of a slow answer, the imports.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from iwae.launch.cli import exit_on_bad_overrides
from iwae.launch.config_check import check_override_keys, search_space_as_arguments
from tests.helpers import CONF_DIR, ROOT, TINY, no_wandb_env

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "wandb")
# train.py's __main__ in a fresh interpreter; then the heavy modules that got imported.
PROBE = """
import runpy, sys
sys.argv = ["train.py", *sys.argv[1:]]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit:
    pass
finally:
    print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def _train(args: list[str], cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=no_wandb_env(), capture_output=True, text=True, timeout=timeout
    )


def _probe(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    code = PROBE.format(heavy=HEAVY)
    return subprocess.run(
        [sys.executable, "-c", code, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env={**no_wandb_env(), "COMP_LINE": "python train.py obj"},  # what bash passes -sc
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args",
    [["objectve=iwae"], ["k=abc"], ["--help"], ["--cfg", "job"], ["-sc", "query=bash"]],
    ids=["typo", "bad value", "help", "cfg", "completion"],
)
def test_the_precheck_path_imports_neither_torch_nor_lightning(args, tmp_path):
    proc = _probe(args, tmp_path)
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


# Values that were answered only after torch and Lightning loaded (17 s on a busy machine).
LATE = {
    "estimator": (["objective.estimator=drag"], "objective.estimator must be one of"),
    "ckpt_path": (["ckpt_path=outputs/no_such_run/last.ckpt"], "checkpoint not found"),
    "data.path": (["data=npz", "data.path=/no/such/file.npz"], "does not exist"),
    "init_from": (["init_from=/no/such/file.ckpt"], "init_from: checkpoint not found"),
    "threads": (["threads=10000"], "threads=10000 is above its limit"),
    "ais steps": (["eval.ais.steps=1000000000"], "eval.ais.steps=1000000000 is above"),
    "ais settings": (["eval.ais.steps=5", "eval.ais.init=posterior"], "eval.ais.init must be"),
    "binarization": (["data.binarization=bernoulli"], "data.binarization must be one of"),
    "compile": (["compile=yes"], "compile must be true or false"),
    "plugins": (["plugins=[a/b.py]"], "is not a module name"),
    "logger dir": (
        ["logger=tensorboard", "logger.tensorboard.save_dir=/etc/hostname/tb"],
        "/etc/hostname is a file",
    ),
}


@pytest.mark.parametrize("case", list(LATE))
def test_values_that_need_no_torch_are_answered_before_it_loads(case, tmp_path):
    args, expected = LATE[case]
    proc = _probe(args, tmp_path)
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


# --- refused before Hydra creates the run directory ------------------------------------------
def test_a_bad_value_leaves_no_run_directory(tmp_path):
    proc = _train(["k=abc", f"hydra.run.dir={tmp_path / 'new'}"])
    assert proc.returncode == 2 and proc.stderr == "error: k must be an integer >= 1, got 'abc'\n"
    assert not (tmp_path / "new").exists()


def test_a_value_refused_after_hydra_started_leaves_no_run_directory(tmp_path):
    """A key the data module does not take is seen only when the run builds the data: the
    directory Hydra made for it goes, but one that was there before stays."""
    proc = _train(["+data.colour=red", f"hydra.run.dir={tmp_path / 'new'}"])
    assert proc.returncode == 2 and "data.colour is not a setting" in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    proc = _train(["+data.colour=red", f"hydra.run.dir={tmp_path / 'old'}"])
    assert proc.returncode == 2 and (tmp_path / "old").is_dir()


# --- the Optuna sweeper -----------------------------------------------------------------------
def test_an_optuna_study_of_no_trials_is_refused_in_one_line(capsys):
    argv = ["-m", "hparams_search=iwae_optuna", "hydra.sweeper.n_trials=0"]
    with pytest.raises(SystemExit) as exit_:
        exit_on_bad_overrides(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: hydra.sweeper.n_trials must be an integer >= 1 (the trials the study runs), got 0\n"
    )


def test_a_search_space_key_with_a_dot_is_read_as_the_sweeper_reads_it():
    argv = [
        "-m",
        "hparams_search=iwae_optuna",
        "hydra.sweeper.params.optimizer.lr=interval(1e-4,3e-3)",
    ]
    assert search_space_as_arguments(argv)[2] == "optimizer.lr=interval(1e-4,3e-3)"
    assert check_override_keys(argv, CONF_DIR) is None
    misspelt = [*argv[:2], "hydra.sweeper.params.optimizer.lrr=interval(1e-4,3e-3)"]
    message = check_override_keys(misspelt, CONF_DIR)
    assert "(did you mean optimizer.lr?)" in message and "+optimizer.lrr=0.0001" not in message
    reversed_ends = [*argv[:2], "hydra.sweeper.params.optimizer.lr=interval(0.003,0.0001)"]
    assert "write interval(0.0001, 0.003)" in check_override_keys(reversed_ends, CONF_DIR)


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason='hydra-optuna-sweeper is not installed (pip install -e ".[search]")',
)
@pytest.mark.parametrize(
    "space,expected",
    [
        ("tag(log, interval(-1e-4, 3e-3))", "a log range must lie above 0"),
        ("tag(log, interval(0, 3e-3))", "a log range must lie above 0"),
        ("tag(log, interval(3e-3, 1e-4))", "write interval(0.0001, 0.003)"),
    ],
)
def test_a_search_range_optuna_refuses_is_refused_in_one_line_first(space, expected, tmp_path):
    """Optuna's answer was a ValueError traceback, and an empty sweep folder."""
    sweep = tmp_path / "sweep"
    argv = ["-m", "hparams_search=iwae_optuna", f"hydra.sweeper.params.optimizer.lr={space}"]
    message = check_override_keys(argv, CONF_DIR)
    assert message is not None and expected in message and "\n" not in message
    proc = _train([*argv, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and expected in proc.stderr
    assert not sweep.exists()


def test_a_presets_search_space_is_checked_too():
    from iwae.errors import UserError
    from iwae.launch.config_check import check_search_space

    check_search_space(
        OmegaConf.load(CONF_DIR / "hparams_search" / "iwae_optuna.yaml").hydra.sweeper
    )
    bad = OmegaConf.create({"params": {"optimizer.lr": "tag(log, interval(-1, 1e-3))"}})
    with pytest.raises(UserError, match=r"^hydra.sweeper.params.optimizer.lr=tag\(log"):
        check_search_space(bad)


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason='hydra-optuna-sweeper is not installed (pip install -e ".[search]")',
)
def test_a_study_whose_trials_end_before_validation_stops_in_one_line(tmp_path):
    """Three steps of a ten-step epoch: no trial would validate. The first trial (with the
    search space given on the command line) runs, then the study stops with one line, not
    Optuna's "No trials are completed yet" traceback after every trial."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hparams_search=iwae_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.params.optimizer.lr=interval(0.0005,0.0006)",
        *TINY,
        "logger=none",
        "++trainer.max_steps=3",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = _train(args, timeout=400)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: this trial ended after 3 training steps without a validation")
    assert "trainer.max_steps" in last and "Traceback" not in proc.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0"]
    lr = OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml").optimizer.lr
    assert 0.0005 <= lr <= 0.0006  # the command line's search space, not the preset's
    assert "val/bound" not in json.loads((sweep / "0" / "metrics.json").read_text())
