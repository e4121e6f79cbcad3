"""``hydra/launcher=fused`` end to end: ``python train.py -m ...`` in a subprocess, from another
working directory, against the same sweep run by Hydra's basic launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iwae.launch.cli import CONF_DIR
from iwae.launch.config_check import check_override_keys
from tests import helpers
from tests.helpers import TINY, run_dirs, run_train

SWEEP = ["objective=vae,iwae", "k=1,5,50", "schedule.epochs=2", "logger=csv", "threads=1"]

# The fused and the separate runs draw the same initial weights, data order, binarization and
# noise, and on one CPU thread a VAE or IWAE member computes every value as its separate run
# does (tests/test_fused.py): their test/nll are equal to the last bit, k = 50 included (where
# batched rounding, amplified by training, once made them differ by half a nat).


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_fused_sweep_equals_the_separate_runs(tmp_path: Path) -> None:
    fused, basic = tmp_path / "fused", tmp_path / "basic"
    cwd = tmp_path / "elsewhere"  # the plugin is found from any working directory
    cwd.mkdir()
    common = ["-m", *SWEEP, *TINY]
    proc = run_train([*common, "hydra/launcher=fused", f"hydra.sweep.dir={fused}"], cwd, 300)
    run_train([*common, f"hydra.sweep.dir={basic}"], cwd, 300)
    assert proc.stdout.count("fused group of 2") == 3  # split by k on the CPU: k=1, 5 and 50
    fused_runs, basic_runs = run_dirs(fused), run_dirs(basic)
    names = [str(n) for n in range(6)]
    assert [r.name for r in fused_runs] == [r.name for r in basic_runs] == names
    for f, b in zip(fused_runs, basic_runs):
        mf, mb = _metrics(f), _metrics(b)
        assert set(mf) - set(mb) == {"train/fused_members"} and set(mb) <= set(mf)
        for key in ("objective", "k", "model", "data", "seed", "train/steps", "train/epochs"):
            assert mf[key] == mb[key], key
        assert mf["test/nll"] == mb["test/nll"], (f.name, mf["test/nll"], mb["test/nll"])
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            assert (f / ".hydra" / name).is_file()
        assert (f / ".hydra" / "overrides.yaml").read_text().count("\n- ") >= 1
        assert (f / "samples.png").is_file() and (f / "csv" / "metrics.csv").is_file()
    # mode=eval reads a member's checkpoint as a separate run's and reproduces its test/nll
    member = fused_runs[3]
    ckpt = member / "checkpoints" / "last.ckpt"
    run_train(["mode=eval", f"ckpt_path={ckpt}", "eval.k=20", "logger=none",
               f"hydra.run.dir={tmp_path / 'eval'}"], cwd, 300)  # fmt: skip
    assert _metrics(tmp_path / "eval")["test/nll"] == _metrics(member)["test/nll"]
    helpers.check_report(fused, 6, "--no-checkpoints")


@pytest.mark.slow  # W&B starts a process per run: about 40 s under load
def test_each_member_has_its_own_wandb_run_in_the_sweeps_group(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "fusedwb"
    args = ["-m", "hydra/launcher=fused", "objective=vae,iwae", f"hydra.sweep.dir={sweep}", *TINY]
    run_train(args, tmp_path, 300)
    tags = ["objective=vae", "objective=iwae"]
    for run, tag, other in zip(run_dirs(sweep), tags, reversed(tags)):
        (run_file,) = helpers.wandb_run_files(run)
        data = run_file.read_bytes()
        assert helpers.wandb_string_field("fusedwb", helpers.WANDB_GROUP) in data
        assert helpers.wandb_string_field(tag, helpers.WANDB_TAG) in data
        assert helpers.wandb_string_field(other, helpers.WANDB_TAG) not in data
        objective = tag.split("=")[1]  # the member's config, at the top of its W&B config
        assert helpers.wandb_config_item("objective", f'"{objective}"') in data


def _fails(args: list[str], tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(helpers.TRAIN), "-m", "hydra/launcher=fused", *args, *TINY,
         "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=helpers.train_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert not list((tmp_path / "sweep").rglob("metrics.json"))
    return lines[0]


def test_bad_input_ends_in_one_line(tmp_path: Path) -> None:
    line = _fails(["model=one_layer,two_layer", "hydra.launcher.single_group=true"], tmp_path)
    assert "single_group=true" in line and "model" in line
    assert "MIWAE" in _fails(["objective=iwae,miwae"], tmp_path)
    assert "steps_per_batch=4: drop it" in _fails(["steps_per_batch=4"], tmp_path)
    if not torch.cuda.is_available():
        assert "trainer.accelerator=gpu" in _fails(["trainer.accelerator=gpu"], tmp_path)


def test_unknown_launcher_option_is_one_line() -> None:
    line = check_override_keys(
        ["-m", "hydra/launcher=fused", "hydra.launcher.single_grup=true"], CONF_DIR
    )
    assert line is not None and "hydra.launcher.single_grup" in line and "single_group" in line
