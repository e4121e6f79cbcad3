"""What the tests share: the project's config composed for a test, tiny run settings, running
``train.py`` as a user would (a subprocess), test-only callbacks that inject faults into such a
run, and small builders of data files and models.

The callbacks are added to a real ``python train.py`` run from the command line
(``+callbacks.fault._target_=tests.helpers.SignalAt``), so the process under test is the one a
user runs; they deliver a real signal to it at an exact, chosen point.

Sweeps and DDP must run outside pytest: Lightning's ``strategy=ddp`` starts rank 1 by re-running
the command line, which inside pytest is pytest itself.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import Callback
from scipy.io import savemat
from torch import Tensor

from iwae.launch.resolvers import register_resolvers
from iwae.model import IWAEModel
from iwae.objectives import Objective

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
TRAIN = ROOT / "train.py"


# --- the config -------------------------------------------------------------------------------
def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The project's config with ``overrides``, writing to ``output_dir`` (no Hydra run)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


# A run that finishes in seconds on a CPU: 200 training images (10 steps an epoch), a tiny
# evaluation. The logger is the default (W&B): runs in this process add "logger=none". A later
# override of the same key wins, so a test states how its run differs: [*TINY, "schedule.epochs=3"].
TINY = [
    "data.split=[200,50,50]",
    "schedule.epochs=1",
    "eval.k=20",
    "eval.val_k=5",
    "trainer.enable_progress_bar=false",
]

# The reliability tests' run (resume, signals, locks, non-finite values): 3 epochs (30 steps), a
# checkpoint every 4 steps, no logger.
TINY_CKPT = [
    *TINY,
    "logger=none",
    "schedule.epochs=3",
    "eval.k=10",
    "callbacks=frequent",
    "callbacks.periodic.every_n_train_steps=4",
]

# Runs that stop before training (bad input) and untrained checkpoints: the data set's own split.
FAST = [
    "logger=none",
    "schedule.epochs=1",
    "eval.k=5",
    "eval.val_k=2",
    "trainer.enable_progress_bar=false",
]


# --- running train.py -------------------------------------------------------------------------
def train_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for a run: W&B offline, and its caches under ``tmp``, not in $HOME."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
        WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
        WANDB_DATA_DIR=str(tmp / "wandb-data"),
        WANDB_SILENT="true",
    )
    env.update(extra)
    return env


def no_wandb_env() -> dict[str, str]:
    """This process's environment with W&B disabled and the repository importable (for the
    test callbacks in this module)."""
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}


def run_train(
    args: list[str],
    cwd: Path = ROOT,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    *,
    run_dir: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``python train.py *args`` in ``cwd`` (with ``hydra.run.dir=<run_dir>`` if given).

    ``env``: None for `train_env` (W&B offline, its caches under ``cwd``). ``check``: fail the
    test with the output's tail unless the run exits 0; with False the caller checks.
    """
    cmd = [sys.executable, str(TRAIN), *args]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env or train_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"train.py {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc


def start_train(args: list[str], run_dir: Path, log: Path) -> subprocess.Popen:
    """``python train.py <args> hydra.run.dir=<run_dir>`` in the background, output to ``log``
    (a file: a pipe nobody reads could fill and stall the run)."""
    cmd = [sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=no_wandb_env(), stdout=out, stderr=out)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def wait_for_checkpoint_write(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> bool:
    """Wait until ``proc`` writes ``last.ckpt`` (so it is training) or exits; True if it wrote.

    Signals sent after this land in training whatever the machine's load, not in start-up.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns if last.exists() else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if last.exists() and last.stat().st_mtime_ns != before:
            return True
        time.sleep(0.02)
    return False


# --- sweeps, W&B and the report -----------------------------------------------------------------
def run_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's run directories (``0``, ``1``, ...) in job order."""
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def wandb_run_files(run_dir: Path) -> list[Path]:
    """The offline W&B runs in a run directory (``wandb/offline-run-*/run-*.wandb``)."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def wandb_string_field(value: str, field: int) -> bytes:
    """How protobuf stores a short string field: W&B 0.31 ships no reader for offline runs,
    but its run record (``RunRecord``: ``run_group`` is field 6, ``tags`` field 10) lies in
    the ``.wandb`` file as these bytes."""
    data = value.encode()
    assert len(data) < 128, "one-byte length only"
    return bytes([field << 3 | 2, len(data)]) + data


WANDB_GROUP, WANDB_TAG = 6, 10


def wandb_config_item(key: str, value_json: str) -> bytes:
    """A W&B ``ConfigItem`` as the offline run file stores it: ``key`` (field 1) then
    ``value_json`` (field 16, a two-byte tag)."""
    k, v = key.encode(), value_json.encode()
    return bytes([0x0A, len(k)]) + k + bytes([0x82, 0x01, len(v)]) + v


def check_report(sweep_dir: Path, runs: int, *flags: str, timeout: float = 300) -> str | None:
    """``python -m iwae.reports.table1 <sweep>`` succeeds and its table1.csv has a row per run.
    Returns its output; None while the report module does not exist."""
    if importlib.util.find_spec("iwae.reports.table1") is None:
        return None
    proc = subprocess.run(
        [sys.executable, "-m", "iwae.reports.table1", *flags, str(sweep_dir)],
        cwd=ROOT,
        env=train_env(sweep_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"iwae.reports.table1 failed:\n{proc.stderr[-4000:]}"
    rows = (sweep_dir / "table1.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + runs, rows
    return proc.stdout


# --- faults injected into a real run --------------------------------------------------------------
# Points in a training step where a signal can land, in the order Lightning reaches them.
HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")


class SignalAt(Callback):
    """Sends signal ``sig`` to this process in ``hook`` when ``global_step == step``.

    SIGKILL ends the process at once (no handler, no cleanup): a kill at that exact point.
    """

    def __init__(
        self, step: int, hook: str = "on_train_batch_start", sig: str = "SIGKILL", times: int = 1
    ):
        if hook not in HOOKS:
            raise ValueError(f"hook must be one of {HOOKS}")
        self.step, self.hook, self.signum = step, hook, signal.Signals[sig]
        self.times, self.sent = times, False

    def _maybe_send(self, trainer: pl.Trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step and not self.sent:
            self.sent = True  # a handled signal (SIGTERM) lets the step finish: send it once
            for _ in range(self.times):  # os.kill runs the handler before it returns
                os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._maybe_send(trainer, "on_train_batch_start")

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._maybe_send(trainer, "on_before_optimizer_step")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._maybe_send(trainer, "on_train_batch_end")


def signal_at(
    step: int, hook: str = "on_train_batch_start", sig: str = "SIGKILL", times: int = 1
) -> list[str]:
    """Overrides that add a `SignalAt` callback to a train.py run."""
    return [
        f"+callbacks.fault._target_={__name__}.SignalAt",
        f"+callbacks.fault.step={step}",
        f"+callbacks.fault.hook={hook}",
        f"+callbacks.fault.sig={sig}",
        f"+callbacks.fault.times={times}",
    ]


class PauseAt(Callback):
    """At ``global_step == step``: write ``<run dir>/paused`` and wait (at most ``timeout``
    seconds) until the test creates ``<run dir>/go``. Holds a run in training, lock held, for
    as long as a test needs: no guessing how long a run takes on a loaded machine."""

    def __init__(self, step: int, timeout: float = 300) -> None:
        self.step, self.timeout = step, timeout

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        run_dir = Path(trainer.default_root_dir)
        (run_dir / "paused").write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not (run_dir / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def pause_at(step: int) -> list[str]:
    """Overrides that add a `PauseAt` callback to a train.py run."""
    return [f"+callbacks.pause._target_={__name__}.PauseAt", f"+callbacks.pause.step={step}"]


DIGEST_BEFORE = "last_ckpt_sha256_before_fault"


class NonFiniteAt(Callback):
    """At ``global_step == step``: fill the batch with NaN (``what="batch"``), or put an inf
    into one gradient after backward (``what="gradient"``)."""

    def __init__(self, step: int, what: str = "batch") -> None:
        self.step, self.what = step, what

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        if trainer.global_step != self.step:
            return
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():  # for the test: the last good checkpoint, before the fault
            (Path(trainer.default_root_dir) / DIGEST_BEFORE).write_text(file_digest(last))
        if self.what == "batch":
            batch.fill_(float("nan"))  # the minibatch is a fresh tensor (indexed copy)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.what == "gradient" and trainer.global_step == self.step:
            param = next(p for p in pl_module.parameters() if p.grad is not None)
            param.grad.view(-1)[0] = float("inf")


# --- a run's results and checkpoints ------------------------------------------------------------
def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the run's last checkpoint (written after the final step)."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["state_dict"]


def comparable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything in metrics.json except wall-clock time."""
    return {k: v for k, v in metrics.items() if k != "train/seconds"}


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return comparable_metrics(json.loads((run_dir / "metrics.json").read_text()))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_run(tmp_path_factory: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The uninterrupted TINY_CKPT run (in-process): final weights and metrics.

    Kept in the session's base temp directory, so the test modules that compare against it
    (resume, signals) share one run.
    """
    from iwae.launch.run import train

    run_dir = Path(tmp_path_factory.getbasetemp()) / "reliability-reference"
    if not (run_dir / "metrics.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        train(compose_config(TINY_CKPT, run_dir), run_dir)
    return final_weights(run_dir), read_metrics(run_dir)


def save_untrained_checkpoint(path: Path, overrides: list[str]) -> None:
    """A checkpoint with the layout train.py writes (state_dict + iwae_config), untrained."""
    from iwae.launch.assembly import build, build_module

    cfg = compose_config([*FAST, *overrides], path.parent)
    datamodule = build(cfg.data)
    datamodule.prepare()
    module = build_module(cfg, datamodule)
    torch.save({"state_dict": module.state_dict(), "iwae_config": module.config}, path)


# --- data files in the formats the data modules read --------------------------------------------
def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """An IDX file of uint8 ``array`` (gzipped when the name ends in .gz, or ``compress``)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_amat(path: Path, binary: np.ndarray) -> Path:
    """Larochelle's layout: one image a line, values separated by single spaces."""
    lines = (" ".join(str(int(v)) for v in row) for row in binary)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_chardata(path: Path, train: np.ndarray, test: np.ndarray) -> Path:
    """``chardata.mat`` as the paper's authors stored it: each 28x28 image flattened in MATLAB's
    column-major order, one image a column (``784 x N``)."""

    def to_matlab(images: np.ndarray) -> np.ndarray:  # [N, 28, 28] row-major -> [784, N]
        return images.reshape(len(images), 28, 28).reshape(len(images), 784, order="F").T

    savemat(path, {"data": to_matlab(train), "testdata": to_matlab(test)})
    return path


def asymmetric_digit() -> np.ndarray:
    """A 28x28 image that no transpose or flip maps onto itself: an 'L' in the top-left."""
    image = np.zeros((28, 28), dtype=np.float32)
    image[2:20, 3] = 1.0  # vertical bar: rows 2..19 of column 3
    image[19, 3:12] = 1.0  # horizontal bar along row 19
    image[0, 27] = 0.5  # one grey pixel top-right
    return image


# --- small models and gradients (estimators, objectives, diagnostics) ---------------------------
ESTIMATORS = ("reparam", "stl", "dreg")


def small_model(seed: int = 0, input_dim: int = 6) -> IWAEModel:
    torch.manual_seed(seed)
    model = IWAEModel(input_dim, latent_dims=[2], hidden_dims=[[4]]).double()
    with torch.no_grad():  # larger weights than Glorot: a posterior q does not fit exactly
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def binary_images(n: int, d: int = 6, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g, dtype=torch.float64) > 0.5).double()


def grads(objective: Objective, model, x: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(bound [B], flat generative gradient, flat inference gradient) at noise ``seed``."""
    torch.manual_seed(seed)
    out = objective(model, x)
    theta, phi = model.generative_parameters(), model.inference_parameters()
    g = torch.autograd.grad(out.loss, theta + phi, allow_unused=True)
    g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(theta + phi, g, strict=True)]
    flat = [torch.cat([t.flatten() for t in part]) for part in (g[: len(theta)], g[len(theta) :])]
    return out.bound, flat[0], flat[1]
