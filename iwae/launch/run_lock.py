"""One process per run directory, and a run directory that can be written, checked up front.

Two processes writing one run directory (a resume started while the first run still trains, a
sweep relaunched by hand) delete each other's temp files and overwrite each other's
checkpoints. The first takes an exclusive ``fcntl.flock`` on ``<run dir>/.iwae.lock`` and holds
it for its life; the kernel drops it when the process ends, however it ends (kill -9
included), so no stale lock is ever left behind. The second stops with one line naming the
directory and the holder's PID.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iwae.errors import UserError

LOCK_NAME = ".iwae.lock"

# Run directories this process holds, with the lock file's descriptor. flock belongs to an open
# file: opening and locking the file again from this process would refuse ourselves. Keyed by
# the resolved path, so a symlinked spelling of the same directory is recognised.
_held: dict[Path, int] = {}


def _key(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir).resolve()


def _is_first_process() -> bool:
    """Not a DDP rank > 0 (Lightning re-runs the command line for those, with the same run
    directory; srun and torchrun set the ranks too): rank 0 holds the lock for all of them."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def _unwritable(path: Path, err: OSError, key: str = "hydra.run.dir") -> UserError:
    return UserError(
        f"cannot write to the output directory {path} ({err.strerror or err}); pass "
        f"{key}=<a writable directory>"
    )


def acquire_run_lock(
    run_dir: str | os.PathLike, what: str = "run directory", key: str = "hydra.run.dir"
) -> None:
    """Lock ``run_dir`` for this process (creating it), or raise a one-line `UserError` if
    another process holds it or the directory cannot be written. ``what`` and ``key`` name the
    directory in that line (a fused sweep locks its ``hydra.sweep.dir``, a "sweep directory")."""
    run_dir = _key(run_dir)
    if run_dir in _held or not _is_first_process():
        return
    lock = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a lock file that is a symbolic link would have the PID written over
        # whatever it points to (the open fails with ELOOP instead).
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(
                f"{lock} is a symbolic link (to {os.readlink(lock)}); the lock is never taken "
                f"through one, since that would overwrite the file it points to: remove the link"
            ) from None
        raise _unwritable(run_dir, err, key) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(
            f"{what} {run_dir} is in use by another process (PID {holder}); wait for it "
            f"to end, or pass another {key}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[run_dir] = fd


def release_run_lock(run_dir: str | os.PathLike) -> None:
    """Drop the lock. The file stays: deleting it could let two processes lock two files."""
    fd = _held.pop(_key(run_dir), None)
    if fd is not None:
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block; a lock taken before (by
    `claim_output_dir`, before Hydra started) is kept, not released here."""
    taken_here = _key(run_dir) not in _held
    acquire_run_lock(run_dir)
    try:
        yield
    finally:
        if taken_here:
            release_run_lock(run_dir)


def _override(argv: list[str], key: str) -> str | None:
    """The last ``key=value`` (or ``+key=``/``++key=``) on the command line, unquoted."""
    value = None
    for arg in argv:
        name, sep, rest = arg.partition("=")
        if sep and name.lstrip("+") == key:
            value = rest.strip("'\"")
    return value


def claim_output_dir(argv: list[str]) -> None:
    """Before Hydra starts (it would fail with a logging traceback, and a second process would
    overwrite the first one's ``.hydra/``): check that the output directory can be written, and
    for a single run or a fused sweep lock it for the life of this process."""
    multirun = "-m" in argv or "--multirun" in argv
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = _override(argv, key)
    if given is None or "${" in given:  # the default (or Hydra resolves it): its parent
        path = Path("multirun" if multirun else "outputs").absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise _unwritable(existing, PermissionError(13, "Permission denied"), key)
        return
    path = Path(given).absolute()
    if not multirun:
        acquire_run_lock(path)
        return
    if "hydra/launcher=fused" in argv:  # one process trains the whole sweep: it locks it all
        acquire_run_lock(path, "sweep directory", key)
        return
    try:  # each job of a sweep locks its own directory when it starts (train.py's main)
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise _unwritable(path, err, key) from None
