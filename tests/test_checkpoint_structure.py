"""A checkpoint is read on its own terms only as far as it is what train.py writes.

- Its structure is checked in one place (`iwae.training.checkpoint_file`, called by
  ``load_checkpoint``): a list where a mapping belongs or a number where a tensor belongs is
  one line naming the entry, whether the file is resumed, used by ``init_from``, evaluated
  (``mode=eval``, the report tools) or resumed by a fused group.
- A data file's path stored in a checkpoint is opened only inside this machine's data
  directory or the run's own directory (links followed); any other file is scored only when
  the command line names it (``eval.data_path=``), and the refusal says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iwae.errors import UserError
from iwae.launch.assembly import load_init_weights, load_run
from iwae.launch.run import train
from iwae.training.checkpointing import load_checkpoint
from tests.helpers import TINY, compose_config, save_untrained_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A one-epoch run's last.ckpt (weights, optimizer, loops, callbacks), as a dict."""
    run_dir = tmp_path_factory.mktemp("structure") / "run"
    overrides = [*TINY, "logger=none", "eval.enabled=false", "threads=1"]
    train(compose_config(overrides, run_dir), run_dir)
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _damaged(trained: dict, damage, path: Path) -> Path:
    checkpoint = {**trained, "state_dict": dict(trained["state_dict"])}
    checkpoint["optimizer_states"] = [dict(s) for s in trained["optimizer_states"]]
    checkpoint["callbacks"] = dict(trained["callbacks"])
    damage(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


DAMAGES = {
    "optimizer state a list": (
        lambda c: c["optimizer_states"][0].update(state=[1, 2]),
        "optimizer_states[0].state is a list where a mapping belongs",
    ),
    "a weight a number": (
        lambda c: c["state_dict"].update({"model.encoder.0.head.bias": 3}),
        "state_dict['model.encoder.0.head.bias'] is the number 3 where a tensor belongs",
    ),
    "RNG state a number": (
        lambda c: c["callbacks"].update(RNGStateCheckpoint={"ranks": 7}),
        "callbacks.RNGStateCheckpoint.ranks is the number 7 where a list belongs",
    ),
    "loops a list": (lambda c: c.update(loops=[]), "loops is a list where a mapping belongs"),
    "global_step a string": (
        lambda c: c.update(global_step="10"),
        "global_step is the string '10' where an integer belongs",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_every_loader_refuses_a_damaged_checkpoint_in_one_line(case, trained, tmp_path):
    damage, problem = DAMAGES[case]
    path = _damaged(trained, damage, tmp_path / "run" / "checkpoints" / "last.ckpt")
    expected = f"{path} is damaged or was not written by train.py: {problem}; use an intact"
    run_dir = tmp_path / "run"
    loaders = {
        "resume": lambda: train(
            compose_config([*TINY, "logger=none", "resume=true"], run_dir), run_dir
        ),
        "init_from": lambda: load_init_weights(torch.nn.Linear(2, 2), path),
        "mode=eval": lambda: load_run(path),
        "load_checkpoint": lambda: load_checkpoint(path),
    }
    for name, load in loaders.items():
        with pytest.raises(UserError) as err:
            load()
        assert str(err.value).startswith(expected), f"{name}: {err.value}"
        assert "\n" not in str(err.value)


def test_an_intact_checkpoint_passes_the_structure_check(trained):
    from iwae.training.checkpoint_file import check_structure

    check_structure(trained, "last.ckpt")  # train.py's own file: nothing to say


# --- a stored data path -------------------------------------------------------------------------
@pytest.fixture
def npz_checkpoint(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A checkpoint of a ``data=npz`` run as train.py writes it, its data file in the run's
    own directory; (checkpoint, data file). This machine's data directory is elsewhere."""
    run_dir = tmp_path / "run"
    data = run_dir / "images.npz"
    run_dir.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data, all=rng.random((60, 6, 6), dtype=np.float32))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    save_untrained_checkpoint(ckpt, ["data=npz", f"data.path={data}", "data.split=[40,10,10]"])
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "machine_data"))
    return ckpt, data


def _stored_path(ckpt: Path, path: Path, sha256: str | None = None) -> Path:
    """``ckpt`` with its data file's path (and checksum) as a crafted file would store them."""
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["iwae_config"]["data"]["path"] = str(path)
    if sha256 is not None:
        checkpoint["NpzDataModule"] = {"data_file": {"path": str(path), "sha256": sha256}}
    torch.save(checkpoint, ckpt)
    return ckpt


def test_a_data_file_in_the_runs_own_directory_is_read(npz_checkpoint):
    ckpt, data = npz_checkpoint
    assert load_run(ckpt).datamodule.path == data


@pytest.mark.parametrize("stored", ["/etc/passwd", "outside/images.npz", "link.npz"])
@pytest.mark.parametrize("with_checksum", [True, False])
def test_a_stored_path_elsewhere_is_not_opened_on_the_checkpoints_word(
    stored, with_checksum, npz_checkpoint, tmp_path, monkeypatch
):
    ckpt, data = npz_checkpoint
    outside = tmp_path / "outside" / "images.npz"
    outside.parent.mkdir()
    outside.write_bytes(data.read_bytes())
    link = ckpt.parent.parent / "link.npz"  # inside the run directory, pointing outside
    link.symlink_to(outside)
    path = {"outside/images.npz": outside, "link.npz": link}.get(stored, Path(stored))
    _stored_path(ckpt, path, "0" * 64 if with_checksum else None)
    import iwae.launch.assembly as assembly

    opened = []  # where the file would be read
    monkeypatch.setattr(assembly, "prepared_data", lambda node, **kw: opened.append(node.path))
    with pytest.raises(UserError) as err:
        load_run(ckpt)
    message = str(err.value)
    assert message.startswith(f"{ckpt} names the data file {path}, outside this machine's data")
    assert f"pass eval.data_path={path}" in message and "\n" not in message
    assert opened == []  # refused before the file was read


def test_the_command_line_may_name_any_file_and_the_data_directory_is_trusted(
    npz_checkpoint, tmp_path, monkeypatch
):
    ckpt, data = npz_checkpoint
    machine = tmp_path / "machine_data"
    machine.mkdir()
    moved = machine / "images.npz"
    moved.write_bytes(data.read_bytes())
    _stored_path(ckpt, moved)
    assert load_run(ckpt).datamodule.path == moved  # the machine's data directory
    outside = tmp_path / "outside.npz"
    outside.write_bytes(data.read_bytes())
    _stored_path(ckpt, outside)
    assert load_run(ckpt, data_path=str(outside)).datamodule.path == outside  # said by the user


def test_a_checkpoint_outside_a_run_layout_reads_only_the_data_directory(npz_checkpoint, tmp_path):
    ckpt, data = npz_checkpoint
    loose = tmp_path / "run" / "loose.ckpt"  # beside the data, but not <run>/checkpoints/
    loose.write_bytes(ckpt.read_bytes())
    with pytest.raises(UserError, match="pass eval.data_path="):
        load_run(loose)
