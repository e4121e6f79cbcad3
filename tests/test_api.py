"""The Python API (`iwae.api`): ``iwae.train`` is the command line's run, ``iwae.load`` is
``mode=eval``'s loader, and a loaded run reproduces its own test NLL to the last digit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import iwae
from iwae.errors import UserError
from tests.helpers import (
    ROOT,
    TINY,
    assert_same_weights,
    final_weights,
    no_wandb_env,
    read_metrics,
    run_train,
)

RUN = [*TINY, "logger=none", "threads=1", "k=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same overrides run by ``python train.py`` and by ``iwae.train``."""
    base = tmp_path_factory.mktemp("api")
    cli, api = base / "cli", base / "api"
    run_train(RUN, run_dir=cli, env=no_wandb_env())
    iwae.train(RUN, output_dir=api)
    return cli, api


def test_train_is_the_command_lines_run(runs):
    cli, api = runs
    expected, got = read_metrics(cli), read_metrics(api)
    expected.pop("code/commit"), got.pop("code/commit")  # others may commit meanwhile
    assert got == expected
    assert got["model"] == "one_layer" and got["k"] == 3  # Hydra's own choices, as train.py
    assert_same_weights(final_weights(api), final_weights(cli))
    files = {p.relative_to(cli) for p in cli.rglob("*") if p.is_file()}
    assert {p.relative_to(api) for p in api.rglob("*") if p.is_file()} == files
    assert Path(".hydra/overrides.yaml") in files and Path("train.log") in files


def test_load_reproduces_the_runs_test_nll_to_the_last_digit(runs):
    _, api = runs
    run = iwae.load(api)
    assert run.checkpoint == api / "checkpoints" / "last.ckpt"
    assert not run.model.training and run.config.k == 3
    x = run.test_images()
    assert x.shape == (50, 784) and set(x.unique().tolist()) == {0.0, 1.0}
    ll = run.log_likelihood(x, k=run.config.eval.k, seed=run.config.eval.seed)
    assert ll.shape == (50,) and ll.dtype == torch.float64
    assert -ll.mean().item() == run.metrics["test/nll"]
    # the defaults are the run's own evaluation; another seed is another estimate
    assert torch.equal(run.log_likelihood(x), ll)
    assert not torch.equal(run.log_likelihood(x, seed=1), ll)


def test_samples_and_encodings(runs):
    run = iwae.load(runs[1] / "checkpoints" / "last.ckpt")
    assert run.metrics is not None  # last.ckpt: the model metrics.json describes
    samples = run.sample(6, seed=0)
    assert samples.shape == (6, 784) and ((samples > 0) & (samples < 1)).all()
    assert torch.equal(run.sample(6, seed=0), samples)
    mean, log_std = run.encode(run.test_images()[:7])
    assert mean.shape == log_std.shape == (7, 50)


def test_another_checkpoint_has_no_metrics(runs, tmp_path):
    other = tmp_path / "epoch1.ckpt"
    other.write_bytes((runs[1] / "checkpoints" / "last.ckpt").read_bytes())
    assert iwae.load(other).metrics is None


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["objectve=iwae"], "unknown config key 'objectve'"),  # the command line's own line
        (["k=0"], "k must be an integer >= 1"),
        (["k=1,5"], "iwae.train runs one run, and k=1,5 is a sweep"),
        (["-m", "k=1"], "iwae.train takes overrides (key=value), not -m"),
    ],
)
def test_bad_overrides_are_refused_before_anything_is_written(tmp_path, overrides, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        iwae.train(overrides, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_paths_and_images_are_one_line(runs, tmp_path):
    with pytest.raises(UserError, match="holds no checkpoints/last.ckpt"):
        iwae.load(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        iwae.load(tmp_path / "missing")
    run = iwae.load(runs[1])
    with pytest.raises(UserError, match="images must be binary"):
        run.log_likelihood(torch.full((2, 784), 0.5))
    with pytest.raises(UserError, match=r"must be a \[N, 784\] tensor"):
        run.log_likelihood(torch.zeros(2, 28, 28))


def test_importing_iwae_loads_no_torch():
    code = "import sys, iwae; iwae.load; print(sorted(m for m in ('torch',) if m in sys.modules))"
    lazy = "import sys, iwae; print(sorted(m for m in ('torch',) if m in sys.modules))"
    for source, expected in ((lazy, "[]"), (code, "['torch']")):
        out = subprocess.run(
            [sys.executable, "-c", source], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert out.stdout.strip() == expected, out.stderr[-2000:]
