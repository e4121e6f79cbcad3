"""One process per run directory (a lock that a kill -9 cannot leave stale), and an output
directory that cannot be written stops before Hydra starts, in one line."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from iwae.errors import UserError
from iwae.launch.run_lock import LOCK_NAME, acquire_run_lock, release_run_lock, run_lock
from tests.helpers import (
    TINY_CKPT,
    no_wandb_env,
    pause_at,
    read_metrics,
    run_train,
    start_train,
    wait_for_file,
)


def test_a_second_process_in_the_run_directory_stops_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    first = start_train([*TINY_CKPT, *pause_at(5)], run_dir, tmp_path / "first.log")
    try:
        wait_for_file(run_dir / "paused", first)  # training, lock held
        second = run_train(
            [*TINY_CKPT, "resume=true"], run_dir=run_dir, env=no_wandb_env(), check=False
        )
    finally:
        (run_dir / "go").touch()
        first.wait(timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    message = second.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"error: run directory {run_dir} is in use by another process")
    assert f"(PID {first.pid})" in message
    # The first run was not disturbed: it finished and wrote its results.
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert read_metrics(run_dir)["train/steps"] == 30


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    first = start_train([*TINY_CKPT, *pause_at(5)], run_dir, tmp_path / "first.log")
    wait_for_file(run_dir / "paused", first)
    first.kill()  # SIGKILL while holding the lock
    assert first.wait(timeout=60) == -signal.SIGKILL
    assert (run_dir / LOCK_NAME).exists()  # the file stays; the lock went with the process
    resumed = run_train(
        [*TINY_CKPT, "resume=true"], run_dir=run_dir, env=no_wandb_env(), check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_a_lock_is_taken_once_per_process_and_released(tmp_path):
    acquire_run_lock(tmp_path)
    try:
        acquire_run_lock(tmp_path)  # the same process again (pre-Hydra, then the run): no-op
        with run_lock(tmp_path):  # kept by the block: it was taken before
            pass
        assert int((tmp_path / LOCK_NAME).read_text()) > 0
    finally:
        release_run_lock(tmp_path)
    with run_lock(tmp_path):
        pass


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_unwritable_output_directory_stops_before_hydra_in_one_line(tmp_path, where):
    if where == "under a file":  # not a chmod'ed directory: tests may run as root
        (tmp_path / "a-file").write_text("")
        run_dir = tmp_path / "a-file" / "sub"
    else:  # a file system where nobody, root included, can make a directory
        run_dir = Path("/proc/iwae-run")
    proc = run_train(TINY_CKPT, run_dir=run_dir, env=no_wandb_env(), check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"error: cannot write to the output directory {run_dir}")
    assert "hydra.run.dir=" in message


def test_unwritable_directory_is_a_user_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="Not a directory"):
        acquire_run_lock(tmp_path / "a-file" / "sub")
