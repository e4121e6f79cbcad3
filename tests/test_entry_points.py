"""Every command-line entry point answers a user's mistake the same way: one ``error:`` line on
stderr, no traceback, exit status 2 (`iwae.errors.exit_on_user_error`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iwae.errors import UserError, exit_on_user_error
from tests.helpers import ROOT, run_train

REPORTS = [
    ["-m", "iwae.reports.table1"],
    ["-m", "iwae.reports.table2"],
    ["-m", "iwae.reports.binarization"],
    ["-m", "iwae.reports.reproduction", "report"],
]


def assert_one_error_line(proc: subprocess.CompletedProcess[str], words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and words in lines[-1], lines


@pytest.mark.parametrize("command", REPORTS, ids=lambda c: c[1].rsplit(".", 1)[-1])
def test_report_tools_on_an_empty_folder_print_one_error_line(command, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, *command, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_error_line(proc, str(tmp_path))


def test_eval_of_a_missing_checkpoint_prints_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.ckpt"
    proc = run_train(["mode=eval", f"ckpt_path={missing}"], run_dir=tmp_path / "ev", check=False)
    assert_one_error_line(proc, "nowhere.ckpt")


def test_a_multi_line_user_error_is_printed_as_one_line(capsys) -> None:
    @exit_on_user_error
    def main() -> None:
        raise UserError("first part\n  second part")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: first part second part\n"
