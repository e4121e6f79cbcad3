"""What a run prints: no third-party line that reads like a problem but is the design, and a
progress line now and then when stdout is a file (CI, nohup, SLURM) and so no bar is shown.

One tiny run with the default W&B logger (offline, not silenced), stopped by Ctrl-C (SIGINT:
the preemption save), and its resume: the lines users asked about must not appear in either.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import TINY, run_train, signal_at, train_env

# Each line as the third-party code words it (Lightning, W&B); none is a problem here.
NOISE = {
    "Lightning's note on the preemption save": "`weights_only` was not set",
    "Lightning's warning on every resume": "exists and is not empty",
    "Lightning's warning on a short epoch": "smaller than the logging interval",
    "W&B's warning on every run": "The anonymous setting has no effect",
}
PROGRESS = re.compile(r"^step \d+/\d+ \(\d+%\).*steps/s", re.MULTILINE)


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory) -> tuple[str, str]:
    """(output of a run stopped by SIGINT at step 4, output of its resume), stdout and stderr
    together, both with stdout to a pipe and progress lines every 0 s."""
    tmp = tmp_path_factory.mktemp("quiet")
    env = train_env(tmp)
    env.pop("WANDB_SILENT")  # W&B prints its warnings, as it does for a user
    args = [
        *[a for a in TINY if not a.startswith("trainer.enable_progress_bar")],
        "schedule.epochs=2",
        "callbacks.progress.every_seconds=0",
    ]
    first = run_train(
        [*args, *signal_at(4, sig="SIGINT")], cwd=tmp, env=env, run_dir=tmp / "run", check=False
    )
    assert first.returncode == 130, first.stderr[-3000:]
    resumed = run_train([*args, "resume=true"], cwd=tmp, env=env, run_dir=tmp / "run")
    return first.stdout + first.stderr, resumed.stdout + resumed.stderr


@pytest.mark.parametrize("what", NOISE)
def test_a_run_and_its_resume_print_none_of_the_misleading_lines(interrupted_and_resumed, what):
    first, resumed = interrupted_and_resumed
    assert NOISE[what] not in first
    assert NOISE[what] not in resumed


def test_real_warnings_still_print():
    """The filters name their messages: another warning of the same code still shows."""
    import warnings

    from iwae.launch.cli import quiet_third_party_noise

    quiet_third_party_noise()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_third_party_noise()  # filters installed after simplefilter, as in a run
        warnings.warn("Checkpoint directory is on a slow disk", UserWarning, stacklevel=1)
        warnings.warn("Checkpoint directory /x exists and is not empty.", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["Checkpoint directory is on a slow disk"]


def test_progress_lines_when_stdout_is_not_a_terminal(interrupted_and_resumed):
    first, resumed = interrupted_and_resumed
    lines = PROGRESS.findall(first)
    assert lines, first[-2000:]
    # 20 steps in all (2 epochs of 10): the total is the run's, not the epoch's
    assert re.search(r"^step \d+/20 ", first, re.MULTILINE), lines
    assert re.search(r"^step 20/20 \(100%\)", resumed, re.MULTILINE), resumed[-2000:]
