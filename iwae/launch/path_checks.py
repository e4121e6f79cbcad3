"""The paths a config names, checked before torch loads: checkpoints, data, logger directories.

A misspelt ``ckpt_path`` or a ``data.path`` that does not exist used to be answered only after
torch and Lightning had loaded (17 s on a busy machine). What a path is can be told from the
file system alone, and the line says what is there: a run directory given for a checkpoint
names the checkpoint inside it (``did you mean <run>/checkpoints/last.ckpt?``), a misspelt
file name the checkpoints beside it.
"""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from iwae.errors import UserError

CHECKPOINT_NAMES = ("last.ckpt", "best.ckpt")


def check_config_paths(cfg: DictConfig) -> None:
    """``ckpt_path``, ``init_from``, ``data.path``, ``eval.data_path`` and the loggers'
    directories; a value that cannot be read yet (a Hydra interpolation) is left to the run."""
    mode = str(_read(cfg, "mode") or "train")
    ckpt_path = _read(cfg, "ckpt_path")
    if ckpt_path not in (None, "", "null", "last"):
        check_checkpoint_file("ckpt_path", str(ckpt_path))
    init_from = _read(cfg, "init_from")
    if init_from not in (None, "", "null"):
        check_checkpoint_file("init_from", str(init_from))
    data_path = _read(cfg, "data.path")
    if data_path not in (None, "") and mode != "eval":  # mode=eval reads the checkpoint's data
        check_data_path("data.path", str(data_path))
    eval_path = _read(cfg, "eval.data_path")
    if eval_path not in (None, "") and mode == "eval":
        check_data_path("eval.data_path", str(eval_path))
    if mode != "eval":
        check_logger_dirs(cfg.get("logger") or {})


def _read(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's run can resolve
        return None


def check_checkpoint_file(key: str, value: str) -> Path:
    """``value`` must be a checkpoint file; a one-line `UserError` says what is there instead
    (as the run reads it: relative to the working directory, ``~`` not expanded)."""
    path = Path(value)
    if path.is_file():
        return path
    fix = f"pass {key}=<a .ckpt file>"
    if path.is_dir():
        found = _checkpoint_inside(path)
        hint = f"did you mean {found}?" if found else f"it holds no checkpoints/last.ckpt; {fix}"
        raise UserError(f"{key}={value} is a directory, not a checkpoint file; {hint}")
    hint = _near_checkpoint(path)
    prefix = "init_from: " if key == "init_from" else ""
    raise UserError(
        f"{prefix}checkpoint not found: {value}; "
        + (f"did you mean {hint}?" if hint else fix.replace("<a .ckpt", "<an existing .ckpt"))
    )


def _checkpoint_inside(directory: Path) -> Path | None:
    """A run directory's ``checkpoints/last.ckpt`` (or best), or a checkpoints folder's."""
    for folder in (directory / "checkpoints", directory):
        for name in CHECKPOINT_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _near_checkpoint(path: Path) -> Path | None:
    """For a missing file: the closest-named checkpoint in its folder, or the last checkpoint
    of the run directory it would be in."""
    folder = path.parent
    if not folder.is_dir():
        return None
    try:
        names = [p.name for p in folder.iterdir() if p.suffix == ".ckpt" and p.is_file()]
    except OSError:
        return None
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    if close:
        return folder / close[0]
    return _checkpoint_inside(folder)


def check_data_path(key: str, value: str) -> None:
    """``data.path`` or ``eval.data_path`` must exist (as the data modules read it: ``~``
    expanded); which kind of file it must be is the data module's to say."""
    path = Path(value).expanduser()
    if path.exists():
        return
    folder = path.parent
    close = []
    if folder.is_dir():
        try:
            close = difflib.get_close_matches(path.name, [p.name for p in folder.iterdir()], n=1)
        except OSError:
            pass
    hint = f"did you mean {folder / close[0]}?" if close else f"pass {key}=<your .npz or folder>"
    raise UserError(f"{key} {value} does not exist; {hint}")


# Keys of a logger's config that name the directory it writes into.
LOGGER_DIR_KEYS = ("save_dir", "dir", "root_dir")


def check_logger_dirs(loggers: Any) -> None:
    """Every configured logger's directory can be created and written: TensorBoard's answer to
    a read-only ``save_dir`` was an OSError traceback from inside Lightning."""
    if not isinstance(loggers, DictConfig):
        return
    for name in loggers.keys():
        node = _read(loggers, str(name))
        if not isinstance(node, DictConfig):
            continue
        for key in LOGGER_DIR_KEYS:
            value = _read(node, key)
            if value not in (None, ""):
                check_writable_dir(f"logger.{name}.{key}", str(value))
        uri = _read(node, "tracking_uri")
        if isinstance(uri, str) and uri.startswith("file:"):
            check_writable_dir(f"logger.{name}.tracking_uri", uri[len("file:") :], "file:")


def check_writable_dir(key: str, value: str, scheme: str = "") -> None:
    """``value`` is a directory that exists and can be written, or can be created: its nearest
    existing ancestor is a writable directory (a file is written there and removed).
    ``scheme`` is what the key's value has in front of the path (``file:``)."""
    path = Path(value).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    given, fix = f"{key}={scheme}{value}", f"pass {key}={scheme}<a writable directory>"
    if not existing.is_dir():
        raise UserError(f"{given} cannot be created: {existing} is a file; {fix}")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"{given} cannot be written ({existing}: {reason}); {fix}") from None
