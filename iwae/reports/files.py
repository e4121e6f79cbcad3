"""How the report tools read a sweep's files: regular files inside the folder they were given,
and JSON that is not JSON named in one line.

A sweep folder can come from elsewhere (a colleague's archive, a shared disk). A symbolic link
in it (``samples.png -> ~/.ssh/id_rsa``) would make ``report.html`` embed the file it points
to, base64-encoded, in a page meant to be mailed. So every file a report reads (metrics.json,
config.yaml, samples.png, CSV logs, checkpoints) must be a regular file reached from the given
folder through no link; anything else is skipped with one printed line.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from iwae.errors import UserError

_announced: set[Path] = set()  # each skipped file is reported once per process


def regular_file_inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` is a regular file inside ``root`` reached through no symbolic link.

    Missing files are False silently; a link, a device or a file outside ``root`` is False
    with one printed line saying it was skipped."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return _skip(path, f"it is outside {root}")
    here = root
    for i, part in enumerate(parts):
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return False  # not there: nothing to read, nothing to report
        last = i == len(parts) - 1
        if stat.S_ISLNK(mode):
            return _skip(path, "it is a symbolic link" if last else f"{here} is a link")
        if last and not stat.S_ISREG(mode):
            return _skip(path, "it is not a regular file")
    return bool(parts)


def _skip(path: Path, why: str) -> bool:
    if path not in _announced:
        _announced.add(path)
        print(f"skipping {path}: {why}; the reports read only regular files inside the folder")
    return False


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or a one-line `UserError` naming the file if it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        problem = f"{err.msg} at {where}"
    except UnicodeDecodeError as err:
        problem = f"not text ({err.reason})"
    raise UserError(
        f"{path} is not valid JSON ({problem}); it was cut off or edited: rerun or re-evaluate "
        "that run, or move the file away"
    )
