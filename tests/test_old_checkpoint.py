"""A checkpoint written before `iwae/` was split into packages still works: ``mode=eval``,
``resume=true``, ``init_from`` and the report tools' loader give the numbers the old code gave.

``tests/fixtures/pre_layers_run/`` holds ``last.ckpt`` (epoch 2 of 3, a 16-pixel model of 2
latent units), the ``tiny.npz`` it trained on, and ``expected.json``: the commands that made it
at commit cb19cb6 and what that code then printed for each use of the checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from iwae.launch.assembly import load_run
from tests.helpers import read_metrics, run_train

FIXTURE = Path(__file__).parent / "fixtures" / "pre_layers_run"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RUN = [
    "data=npz",
    "data.path=tiny.npz",
    "model.latent_dims=[2]",
    "model.hidden_dims=[[8]]",
    "data.batch_size=10",
    "schedule.epochs=3",
    "eval.k=50",
    "eval.val_k=5",
    "logger=none",
    "seed=3",
    "trainer.enable_progress_bar=false",
]
# The old and the new code ran on the same kind of CPU; the margin allows for another kernel.
TOL = 1e-6


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The fixture copied into a fresh directory. The checkpoint stores the absolute path its
    data had where it was made (``/tmp/oldckpt/tiny.npz``), absent on another machine, so the
    tests that only read the checkpoint name the copy with ``eval.data_path``."""
    shutil.copy(FIXTURE / "tiny.npz", tmp_path / "tiny.npz")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE / "last.ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt")
    return tmp_path


def test_old_checkpoint_evaluates_as_before(workdir: Path) -> None:
    ckpt = workdir / "run" / "checkpoints" / "last.ckpt"
    args = ["mode=eval", f"ckpt_path={ckpt}", "eval.k=50", f"eval.data_path={workdir / 'tiny.npz'}"]
    run_train(args, cwd=workdir, run_dir=workdir / "ev")
    nll = read_metrics(workdir / "ev")["test/nll"]
    assert nll == pytest.approx(EXPECTED["eval"]["test/nll"], abs=TOL)


def test_old_checkpoint_resumes_as_before(workdir: Path) -> None:
    run_train([*RUN, "resume=true"], cwd=workdir, run_dir=workdir / "run")
    metrics = read_metrics(workdir / "run")
    assert metrics["train/steps"] == EXPECTED["resume"]["train/steps"]
    assert metrics["val/bound"] == pytest.approx(EXPECTED["resume"]["val/bound"], abs=TOL)
    assert metrics["test/nll"] == pytest.approx(EXPECTED["resume"]["test/nll"], abs=TOL)


def test_old_checkpoint_initialises_a_fine_tune_as_before(workdir: Path) -> None:
    ckpt = workdir / "run" / "checkpoints" / "last.ckpt"
    args = [*RUN, "schedule.epochs=1", f"init_from={ckpt}"]
    run_train(args, cwd=workdir, run_dir=workdir / "ft")
    metrics = read_metrics(workdir / "ft")
    assert metrics["val/bound"] == pytest.approx(EXPECTED["init_from"]["val/bound"], abs=TOL)
    assert metrics["test/nll"] == pytest.approx(EXPECTED["init_from"]["test/nll"], abs=TOL)


def test_report_loader_rebuilds_the_old_checkpoint(workdir: Path, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    loaded = load_run(
        workdir / "run" / "checkpoints" / "last.ckpt", data_path=str(workdir / "tiny.npz")
    )
    stored = torch.load(FIXTURE / "last.ckpt", weights_only=True)["state_dict"]
    weights = loaded.model.state_dict()
    assert set(weights) == {key.removeprefix("model.") for key in stored}
    for key, value in stored.items():
        assert torch.equal(weights[key.removeprefix("model.")], value), key
