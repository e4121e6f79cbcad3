"""Files a run writes: modes that honour the umask, and a full disk reported in one line with
the previous checkpoint left intact."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch

import iwae.training.checkpointing as checkpointing
from iwae.launch.run import train
from iwae.training.checkpointing import AtomicCheckpointIO, DiskFullError, write_bytes_atomic
from tests.helpers import TINY_CKPT, compose_config, file_digest


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "metrics.json", lambda f: f.write(b"{}"))
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "metrics.json") == expected
    assert mode_of(tmp_path / "last.ckpt") == expected


# What torch.save raises when the disk fills mid-checkpoint (a short write in its zip writer).
TORCH_DISK_FULL = RuntimeError(
    "[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 1234567"
)


@pytest.mark.parametrize(
    "failure", [TORCH_DISK_FULL, OSError(errno.ENOSPC, "No space left on device")]
)
def test_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = file_digest(path)

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(checkpointing.torch, "save", full)
    with pytest.raises(DiskFullError, match="no space left on the device") as info:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert file_digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp left behind


def test_disk_full_during_training_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    """The disk fills after the first checkpoints: the run stops with the one line, no
    metrics.json, and last.ckpt is the last one that was written completely."""
    real_save, saves = torch.save, []

    def fills_after_two(obj, f, *args, **kwargs):
        if len(saves) >= 2:
            raise TORCH_DISK_FULL
        saves.append(obj["global_step"])
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", fills_after_two)
    with pytest.raises(DiskFullError, match="no space left on the device"):
        train(compose_config(TINY_CKPT, tmp_path), tmp_path)
    assert not (tmp_path / "metrics.json").exists()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == saves[-1] > 0
