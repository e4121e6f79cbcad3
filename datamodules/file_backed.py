"""Base class for DataModules whose data come from files: find or download, then trim."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from datamodules.base import BinarizedDataModule, DataSplits
from datamodules.download import RemoteFile, fetch
from iwae.errors import UserError


class FileDataModule(BinarizedDataModule):
    """A `BinarizedDataModule` whose ``load_splits`` reads files found by `fetch_files`.

    Files are looked for in ``root/<subdir>/``, ``root/``, and torchvision's layout
    ``root/<torchvision_dir>/raw/``, so a copy torchvision already downloaded is reused; missing
    ones are downloaded into ``root/<subdir>/``.

    Args:
        base_url: where the files are downloaded from (``<base_url>/<file name>``); a config
            setting so that mirrors (and the tests' local HTTP server) can stand in.
        download: try to download missing files (``false``: only look locally).
        verify_local: check the published checksum of files found in ``root`` as well.
        checksums: ``{file name: sha256}`` to pin or override the built-in checksums.
        subset: ``[n_train, n_val, n_test]``: keep only the first images of each split, for quick
            runs on a small machine (``null``: all).
        **kw: `BinarizedDataModule`'s arguments.
    """

    files: Sequence[RemoteFile] = ()
    subdir = ""
    torchvision_dir = ""
    default_base_url: str | None = None
    trusted_dirs: Sequence[str] = ()

    def __init__(
        self,
        base_url: str | None = None,
        download: bool = True,
        verify_local: bool = True,
        checksums: dict[str, str | None] | None = None,
        subset: Sequence[int] | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.base_url = base_url or self.default_base_url
        self.allow_download, self.verify_local = download, verify_local
        self.checksums = dict(checksums or {})
        unknown = set(self.checksums) - {f.name for f in self.files}
        if unknown:
            raise UserError(
                f"data.checksums names {sorted(unknown)}, which {self.name} does not use; "
                f"its files are {[f.name for f in self.files]}"
            )
        if subset is not None and (len(subset) != 3 or any(int(n) < 1 for n in subset)):
            raise UserError(f"data.subset must be three positive sizes or null, got {subset}")
        self.subset = None if subset is None else tuple(int(n) for n in subset)

    def file_specs(self) -> list[RemoteFile]:
        """The dataset's files with any checksum the user pinned in ``data.checksums``."""
        return [
            RemoteFile(f.name, sha256=self.checksums[f.name]) if f.name in self.checksums else f
            for f in self.files
        ]

    def fetch_files(self) -> dict[str, Path]:
        """``{file name: local path}`` for every file, downloading the missing ones."""
        root = Path(self.root).expanduser()
        dirs = [root / self.subdir, root]
        if self.torchvision_dir:
            dirs.append(root / self.torchvision_dir / "raw")
        return fetch(
            self.file_specs(),
            dirs,
            self.base_url,
            self.name,
            trusted_dirs=[Path(d) for d in self.trusted_dirs],
            verify_local=self.verify_local,
            allow_download=self.allow_download,
        )

    def trim(self, splits: DataSplits) -> DataSplits:
        """Keep the first ``subset`` images of each split (no-op when ``subset`` is null)."""
        if self.subset is None:
            return splits
        cut: list[Tensor] = []
        for split, n in zip(("train", "val", "test"), self.subset, strict=True):
            x = getattr(splits, split)
            if n > len(x):
                raise UserError(
                    f"{self.name}: data.subset asks for {n} {split} images but the {split} "
                    f"split has {len(x)}; lower data.subset"
                )
            cut.append(x[:n])
        return DataSplits(*cut, image_shape=splits.image_shape, prebinarized=splits.prebinarized)
