"""Checkpoint files: written atomically, read without unpickling code, checked before use.

Lightning's own ``TorchCheckpointIO`` saves through an fsspec transaction whose temporary file
lives in the system temp directory: when that is another file system (a tmpfs ``/tmp``, a node-
local disk) the final "rename" is a copy, and a kill during it leaves a truncated checkpoint
where a good one stood. `AtomicCheckpointIO` writes next to the target, fsyncs, then
``os.replace``-s, which is atomic on POSIX within one directory.

A checkpoint is a pickle; ``torch.load(weights_only=True)`` only rebuilds tensors and plain
data, so a crafted file cannot run code. Every load in this project goes through `load_checkpoint`.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from iwae.errors import UserError
from iwae.training.checkpoint_file import check_structure

TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable: without it a power loss can bring the old name back."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A kill at any moment leaves either the old file or the new one at ``path``, never a part.
    Nothing is opened through a link: the temp file is created new (``O_EXCL``), and the
    rename replaces a symbolic link at ``path`` rather than writing to where it points.
    Stale temp files of earlier killed writes to the same ``path`` are removed first: one writer
    per path is assumed (rank 0 writes checkpoints; metrics.json has one writer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(_temp_prefix(path) + "*" + TEMP_SUFFIX):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
    try:
        # mkstemp creates the file 0600 whatever the umask; a colleague on a shared sweep
        # file system must be able to read checkpoints as they can any other file of the run.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise DiskFullError(
                f"no space left on the device writing {path}; free some space there (or pass "
                "hydra.run.dir=<a disk with room>) and resume: the previous file at that path "
                "is intact"
            ) from None
        raise
    _fsync_dir(path.parent)


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` a hard link to the file ``source`` (the same bytes, no copy), atomically:
    a link made beside ``path``, then renamed over it. Where the file system has no hard
    links, a copy written with `write_bytes_atomic`."""
    source, path = Path(source), Path(path)
    for stale in path.parent.glob(_temp_prefix(path) + "*" + TEMP_SUFFIX):
        stale.unlink(missing_ok=True)
    tmp = path.parent / f"{_temp_prefix(path)}link{TEMP_SUFFIX}"
    try:
        os.link(source, tmp)
    except OSError:
        with source.open("rb") as src:
            write_bytes_atomic(path, lambda f: shutil.copyfileobj(src, f))
        return
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class DiskFullError(UserError):
    """A write ran out of space (one line; the file it replaced is untouched)."""


def is_disk_full(err: BaseException) -> bool:
    """Did ``err`` come from a full disk (or quota)? ``torch.save`` reports a short write as a
    ``RuntimeError`` ending in ``unexpected pos`` (inline_container.cc), not as an OSError."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, RuntimeError) and "unexpected pos" in str(err)


def current_umask() -> int:
    """This process's umask. Read from /proc where it is shown: setting it to read it back
    (``os.umask``) would briefly apply umask 0 to files other threads create meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``, or raise a one-line `UserError`.

    Names the problem for a missing file, a truncated or foreign file, and a file holding
    pickled objects other than tensors and plain data (which could run code when unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass ckpt_path=<an existing .ckpt file>")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(
                f"refused to load {path}: it holds pickled objects other than tensors and plain "
                "data, which could run code when loaded; use a checkpoint written by train.py"
            ) from None
        raise UserError(f"{path} is corrupt or not a checkpoint ({_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(
            f"{path} is truncated or not a PyTorch checkpoint ({_first_line(err)}); "
            "use an intact copy (an interrupted copy or download leaves a short file)"
        ) from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a checkpoint written by train.py (it has no state_dict)")
    check_structure(checkpoint, path)  # a list where a mapping belongs: one line, not a traceback
    return dict(checkpoint)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def check_state_dict_matches(
    checkpoint: Mapping[str, Any], module: torch.nn.Module, path: str | os.PathLike
) -> None:
    """Raise a one-line `UserError` if the checkpoint's weights do not fit ``module``.

    Lightning would report a mismatch as a many-line ``RuntimeError`` listing every tensor;
    the first difference and the model/data the checkpoint was written with say what to fix.
    """
    saved: Mapping[str, Any] = checkpoint["state_dict"]
    here = module.state_dict()
    problem = None
    missing = [k for k in here if k not in saved]
    unexpected = [k for k in saved if k not in here]
    if missing:
        problem = f"it lacks {missing[0]}" + (
            f" and {len(missing) - 1} more" if missing[1:] else ""
        )
    elif unexpected:
        problem = f"it has {unexpected[0]}, which this model does not"
    else:
        for key, tensor in here.items():
            other = saved[key]
            if tuple(other.shape) != tuple(tensor.shape):
                problem = f"{key} has shape {tuple(other.shape)} there, {tuple(tensor.shape)} here"
                break
    if problem is not None:
        raise UserError(
            f"checkpoint {path} is for another architecture or input size: {problem}; "
            f"use the model and data it was trained with ({_written_with(checkpoint)})"
        )


def _written_with(checkpoint: Mapping[str, Any]) -> str:
    """``data=..., model=...`` from the config stored in the checkpoint, if there is one."""
    config = checkpoint.get("iwae_config")
    if not isinstance(config, Mapping):
        return "its config is not stored in it"
    data = config.get("data", {}) or {}
    model = config.get("model", {}) or {}
    data_name = data.get("_target_", "?").rsplit(".", 1)[-1]
    layers = {k: model.get(k) for k in ("latent_dims", "hidden_dims") if k in model}
    return f"written with data {data_name}, model {layers}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: temp-file-then-rename saves, ``weights_only=True`` loads.

    Pass it to ``Trainer(plugins=[...])``; every save (ModelCheckpoint, preemption, an explicit
    ``trainer.save_checkpoint``) and every resume goes through it.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        write_bytes_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # ``weights_only`` is ignored on purpose: no caller may turn safe loading off.
        return load_checkpoint(path, map_location="cpu" if map_location is None else map_location)


def atomic_checkpoint_plugins(plugins: list[Any] | None) -> list[Any]:
    """``plugins`` plus an `AtomicCheckpointIO`, unless a CheckpointIO is configured already."""
    plugins = list(plugins or [])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins
