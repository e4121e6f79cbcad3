"""A fused group in this process: grouping, resume after a kill, a NaN in one member, and no
host synchronisation inside a training step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from iwae.errors import UserError
from iwae.fused.group import FusedGroup
from iwae.fused.members import Member, check_member, group_members, training_device
from iwae.fused.runs import train_group
from iwae.training.checkpointing import load_checkpoint
from tests.helpers import TINY, compose_config

# 3 epochs, and the progress bar left at its default
RUN = [*TINY, "logger=none", "schedule.epochs=3", "trainer.enable_progress_bar=null"]


def _members(tmp_path: Path, jobs: list[list[str]]) -> list[Member]:
    members = []
    for job, overrides in enumerate(jobs):
        out = tmp_path / str(job)
        cfg = compose_config([*RUN, *overrides], out)
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        members.append(Member(job, resolved, out, {"model": "one_layer"}, overrides))
    return members


JOBS = [["objective=vae", "k=1"], ["objective=iwae", "k=3"], ["objective=iwae", "k=3", "seed=1"]]


def test_groups_split_by_what_differs_with_one_line(tmp_path: Path) -> None:
    members = _members(tmp_path, [*JOBS, ["model=two_layer"]])
    groups, note = group_members(members, split_by_k=False, single_group=False)
    assert [[m.job for m in g] for g in groups] == [[0, 1, 2], [3]]
    assert note is not None and "\n" not in note and "model" in note
    groups, note = group_members(members[:3], split_by_k=True, single_group=False)
    assert [[m.job for m in g] for g in groups] == [[0], [1, 2]] and note.endswith("differ in k")
    with pytest.raises(UserError, match="single_group=true.*differ in .*model"):
        group_members(members, split_by_k=False, single_group=True)


@pytest.mark.parametrize("setting", ["trainer.max_steps=5", "+trainer.limit_train_batches=0.5"])
def test_trainer_settings_the_loop_lacks_are_refused(tmp_path: Path, setting: str) -> None:
    (member,) = _members(tmp_path, [[setting]])
    with pytest.raises(UserError, match=r"hydra/launcher=fused has no trainer\.") as err:
        check_member(member)
    assert "\n" not in str(err.value)


def test_a_gpu_asked_for_where_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="trainer.accelerator=gpu asks for a GPU"):
        training_device("gpu")
    assert training_device("auto").type == "cpu"


class _Killed(Exception):
    pass


def test_a_killed_group_resumes_bit_for_bit(tmp_path: Path, monkeypatch) -> None:
    """Killed at step 13 (checkpoints every 4 steps and at epoch ends, 10 steps an epoch): the
    resumed group ends with the same weights and metrics as one never interrupted."""
    whole = _members(tmp_path / "whole", JOBS)
    train_group(whole, tmp_path / "whole" / "group.ckpt", checkpoint_every_n_steps=4)
    killed = _members(tmp_path / "killed", JOBS)
    ckpt = tmp_path / "killed" / "group.ckpt"
    step = FusedGroup.train_step

    def dies_at_13(self, x, lr_factor):
        if self.global_step == 13:
            raise _Killed
        return step(self, x, lr_factor)

    monkeypatch.setattr(FusedGroup, "train_step", dies_at_13)
    with pytest.raises(_Killed):
        train_group(killed, ckpt, checkpoint_every_n_steps=4)
    assert load_checkpoint(ckpt)["global_step"] == 12
    assert not (killed[0].output_dir / "metrics.json").exists()
    monkeypatch.setattr(FusedGroup, "train_step", step)
    train_group(killed, ckpt, checkpoint_every_n_steps=4, resume=True)
    for a, b in zip(whole, killed):
        sa = load_checkpoint(a.output_dir / "checkpoints" / "last.ckpt")["state_dict"]
        sb = load_checkpoint(b.output_dir / "checkpoints" / "last.ckpt")["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        ma, mb = (OmegaConf.load(m.output_dir / "metrics.json") for m in (a, b))
        for key in ("test/nll", "val/bound", "train/steps", "train/epochs"):
            assert ma[key] == mb[key], key


def test_a_nan_stops_its_member_alone(tmp_path: Path, capsys) -> None:
    """Member 1's weights are NaN: it stops with one line naming it, member 2 (action=skip,
    max_skips=3) stops after 3 skipped steps, and member 0 trains exactly as without them."""
    jobs = [
        JOBS[1],
        JOBS[2],
        [*JOBS[2], "callbacks.nonfinite.action=skip", "callbacks.nonfinite.max_skips=3"],
    ]
    group = FusedGroup(_members(tmp_path / "nan", jobs), tmp_path / "nan.ckpt")
    clean = FusedGroup(_members(tmp_path / "clean", jobs), tmp_path / "clean.ckpt")
    with torch.no_grad():
        group.stacked.flat[1:, :7] = float("nan")
    group.fit()
    clean.fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if "non-finite" in line]
    assert len(lines) == 2 and "job 1 (" in lines[0] and "at step 0" in lines[0]
    assert "job 2 (" in lines[1] and "after skipping 3 steps" in lines[1]
    assert group.alive.tolist() == [True, False, False] and group.skipped.tolist()[2] == 4
    assert torch.equal(group.stacked.flat[0], clean.stacked.flat[0])
    assert (
        torch.isnan(group.stacked.flat[1, :7]).all()
        and torch.isfinite(group.stacked.flat[1, 7:]).all()
    )


class _CountSyncs(TorchDispatchMode):
    """Counts device-to-host reads (``.item()``, ``bool(tensor)``, ``float(tensor)``). A CPU
    tensor's ``.tolist()`` reads without dispatching: the fused code calls it only in `flush`."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def test_no_host_sync_inside_a_training_step(tmp_path: Path) -> None:
    group = FusedGroup(_members(tmp_path, JOBS), tmp_path / "group.ckpt")
    iterators = [iter(loader) for loader in group.loaders]
    with _CountSyncs() as counter:
        for _ in range(3):
            group.train_step(torch.stack([next(it) for it in iterators]), 1.0)
    assert counter.syncs == 0
    with _CountSyncs() as counter:  # the counter does see a read: bool() of a tensor
        assert bool(group.alive.all())
    assert counter.syncs == 1
