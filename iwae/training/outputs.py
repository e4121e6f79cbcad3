"""What a run leaves behind: metrics.json, a sample grid, and the closing table."""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

from iwae.training.checkpointing import write_bytes_atomic

PROJECT_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


@functools.cache
def code_commit() -> str | None:
    """The git commit of the code that is running (``+dirty`` if tracked files differ from it),
    written into every ``metrics.json`` as ``code/commit`` so that a result names the code that
    made it; None when the project is not a git checkout of its own (an installed wheel)."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(PROJECT_ROOT), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != PROJECT_ROOT:
            return None  # the package sits inside some other repository
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON by temp file + fsync + rename: a kill mid-write never leaves a truncated file
    where a good one stood (the same writer as checkpoints)."""
    text = json.dumps(data, indent=2, sort_keys=True).encode()
    write_bytes_atomic(path, lambda f: f.write(text))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`write_bytes_atomic` for text (UTF-8): a link at ``path`` is replaced, not followed, so
    a folder from elsewhere cannot point a report's output at another file."""
    data = text.encode("utf-8")
    write_bytes_atomic(path, lambda f: f.write(data))


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """A matplotlib figure as a PNG at ``path``, written as `write_bytes_atomic` writes
    (``savefig(path)`` would follow a link at ``path``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    write_bytes_atomic(path, lambda f: f.write(buffer.getvalue()))


def save_sample_grid(
    model, image_shape: tuple[int, ...], path: str | os.PathLike, n: int = 64, seed: int = 0
) -> bool:
    """A PNG grid of ``n`` model samples (Bernoulli means) via torchvision's image grid; True
    if written. The grid is optional: written after the results, and a failure (or flat rows
    with no image shape) is one warning line, never an exception that could cost a result."""
    grid_shape = drawable_shape(image_shape)
    if grid_shape is None:
        log.warning(
            "no sample grid: the images are flat rows of %d values, which are not square; "
            "give data.image_shape=[H,W] to draw them",
            math.prod(image_shape),
        )
        return False
    return optional_artefact(
        f"sample grid {path}", lambda: _write_grid(model, grid_shape, path, n, seed)
    )


def drawable_shape(image_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(H, W)`` to draw an image of ``image_shape`` as: its last two sizes, or a square for
    flat rows of a square length; None for other flat rows."""
    if len(image_shape) >= 2:
        return int(image_shape[-2]), int(image_shape[-1])
    side = math.isqrt(math.prod(image_shape))
    return (side, side) if side * side == math.prod(image_shape) else None


def _write_grid(
    model, grid_shape: tuple[int, int], path: str | os.PathLike, n: int, seed: int
) -> None:
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    images = model.sample(n, generator=g).cpu().view(n, 1, *grid_shape)
    buffer = io.BytesIO()  # written as metrics.json is: a link at ``path`` is not followed
    torchvision.utils.save_image(
        images, buffer, format="png", nrow=int(math.sqrt(n)), padding=2, pad_value=1.0
    )
    write_bytes_atomic(path, lambda f: f.write(buffer.getvalue()))


def optional_artefact(what: str, make: Callable[[], Any]) -> bool:
    """Run ``make``, which writes something a run may lack (a sample grid, media, a figure);
    True if it worked, else one warning line naming ``what`` and the error."""
    try:
        make()
    except Exception as err:  # noqa: BLE001 (any failure of an optional output is one line)
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        log.warning("no %s: %s%s", what, type(err).__name__, f": {message}" if message else "")
        return False
    return True


def format_results(
    metrics: dict[str, Any], run_dir: str | os.PathLike | None = None, seconds: float | None = None
) -> str:
    """The short table printed at the end of a run: what it was, where its files are, how long
    it took (the whole command, training and evaluation) and what it measured."""
    rows = [
        ("objective", metrics.get("objective")),
        ("k", metrics.get("k")),
        ("model", metrics.get("model")),
        ("data", metrics.get("data")),
        ("train/steps", metrics.get("train/steps")),
        ("val/bound", _fmt(metrics.get("val/bound"))),
        (
            f"test/nll (k={metrics.get('eval/k')})",
            _fmt(metrics.get("test/nll"), metrics.get("test/nll_stderr")),
        ),
        (_ais_name(metrics), _fmt(metrics.get("test/nll_ais"), metrics.get("test/nll_ais_stderr"))),
        (
            "test/ais - is",
            _fmt(metrics.get("test/ais_minus_is"), metrics.get("test/ais_minus_is_stderr")),
        ),
        ("bdmc lower, upper", _bdmc(metrics)),
        ("test/active_units", _units(metrics)),
        ("wall time", None if seconds is None else _duration(seconds)),
        ("run dir", None if run_dir is None else str(run_dir)),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows if value is not None]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _fmt(value: Any, stderr: Any = None) -> str | None:
    if value is None:
        return None
    return f"{value:.2f} ± {stderr:.2f}" if stderr is not None else f"{value:.2f}"


def _units(metrics: dict[str, Any]) -> str | None:
    per_layer = metrics.get("test/active_units_per_layer")
    if per_layer is None:
        return None
    return f"{metrics['test/active_units']} ({'+'.join(str(n) for n in per_layer)})"


def _ais_name(metrics: dict[str, Any]) -> str:
    settings = metrics.get("eval/ais") or {}
    images = metrics.get("test/ais_images")
    return f"test/nll_ais ({settings.get('steps')} steps x {settings.get('chains')}, {images} img)"


def _bdmc(metrics: dict[str, Any]) -> str | None:
    if metrics.get("bdmc/lower") is None:
        return None
    lower = _fmt(metrics["bdmc/lower"], metrics.get("bdmc/lower_stderr"))
    upper = _fmt(metrics["bdmc/upper"], metrics.get("bdmc/upper_stderr"))
    gap = _fmt(metrics["bdmc/gap"], metrics.get("bdmc/gap_stderr"))
    return (
        f"{lower}, {upper} (gap {gap}, {metrics.get('bdmc/images')} simulated images, "
        f"{metrics.get('eval/bdmc_steps')} steps)"
    )
