"""Files from elsewhere (a checkpoint, a sweep folder) cannot make the program fetch, reveal or
overwrite anything, and a damaged one is named in one line.

- A checkpoint whose stored data config names a URL, a download and a directory elsewhere is
  rebuilt (``load_run``: ``mode=eval`` and every report tool) from this machine's data
  directory only: nothing is requested, nothing is written.
- The report tools read only regular files inside the folder they are given: a ``samples.png``
  linking to a file elsewhere is not embedded in ``report.html``; outputs written where a link
  stands replace the link, never the file it points to.
- A ``metrics.json`` or ``*.eval.json`` that is not JSON, or a checkpoint that cannot be read,
  ends a report tool with one ``error:`` line (exit 2).
- ``eval.data_path`` of another image size names both pixel counts.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iwae.errors import UserError
from iwae.launch.assembly import load_run
from iwae.reports import reproduction, table1, table2
from iwae.training.outputs import save_sample_grid, write_json_atomic
from tests.helpers import save_untrained_checkpoint, small_model
from tests.test_data_download import serve_mnist, server  # noqa: F401 - the fixture

METRICS = {
    "objective": "iwae", "k": 5, "model": "one_layer", "data": "mnist_subset",
    "binarization": "dynamic", "seed": 0, "test/nll": 100.0, "test/nll_stderr": 1.0,
    "eval/k": 20, "test/images": 50, "train/steps": 10, "val/bound": -101.0,
}  # fmt: skip


def _run_dir(root: Path, name: str = "0", metrics: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics or METRICS))
    return run


# --- a checkpoint's stored data config ------------------------------------------------------------
@pytest.fixture
def downloading_checkpoint(tmp_path, server, monkeypatch) -> tuple[Path, Path]:  # noqa: F811
    """A genuine checkpoint whose stored data config was edited to download MNIST from the
    test's server into ``elsewhere``; (checkpoint, elsewhere). The server has the files."""
    serve_mnist(server.dir)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    save_untrained_checkpoint(ckpt, [])
    checkpoint = torch.load(ckpt, weights_only=True)
    elsewhere = tmp_path / "elsewhere"
    checkpoint["iwae_config"]["data"] = {
        "_target_": "datamodules.MNISTDataModule",
        "root": str(elsewhere),
        "base_url": server.url,
        "download": True,
        "verify_local": False,
        "n_validation": 4,
    }
    torch.save(checkpoint, ckpt)
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "machine_data"))
    return ckpt, elsewhere


def test_a_stored_data_config_never_downloads_or_writes(
    downloading_checkpoint,
    server,  # noqa: F811
    tmp_path,
):
    ckpt, elsewhere = downloading_checkpoint
    with pytest.raises(UserError, match="missing train-images") as err:
        load_run(ckpt)
    assert "\n" not in str(err.value)
    assert str(tmp_path / "machine_data") in str(err.value)  # where to put the files instead
    assert server.requests == []
    assert not elsewhere.exists() and not (tmp_path / "machine_data").exists()


def test_the_report_tool_on_such_a_run_fetches_nothing(
    downloading_checkpoint,
    server,  # noqa: F811
    tmp_path,
    capsys,
):
    ckpt, elsewhere = downloading_checkpoint
    (ckpt.parent.parent / "metrics.json").write_text(json.dumps(METRICS))
    with pytest.raises(SystemExit) as exit_:
        table1.main([str(ckpt.parent.parent), "--ks", "1,2", "--chunk-size", "2"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: data=mnist: missing")
    assert server.requests == [] and not elsewhere.exists()


def test_machine_data_files_are_used_as_found(downloading_checkpoint, server, tmp_path):  # noqa: F811
    """The rebuild reads the dataset from this machine's data directory when it is there."""
    ckpt, elsewhere = downloading_checkpoint
    (tmp_path / "machine_data" / "mnist").mkdir(parents=True)
    serve_mnist(tmp_path / "machine_data" / "mnist")
    run = load_run(ckpt)
    assert len(run.datamodule.splits.test) == 8 and server.requests == []
    assert not elsewhere.exists()
    with pytest.raises(UserError, match=str(tmp_path / "given")):  # the command line's root
        load_run(ckpt, data_root=str(tmp_path / "given"))
    assert server.requests == []


# --- links in a sweep folder ----------------------------------------------------------------------
def test_report_embeds_no_linked_file_and_overwrites_no_linked_target(tmp_path, capsys):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not yours")
    sweep = tmp_path / "sweep"
    run = _run_dir(sweep)
    (run / "samples.png").symlink_to(secret)
    linked_run = tmp_path / "outside_run"
    _run_dir(tmp_path, "outside_run", {**METRICS, "test/nll": 77.77})
    (sweep / "1").symlink_to(linked_run, target_is_directory=True)  # a whole run elsewhere
    (sweep / "2").mkdir()
    (sweep / "2" / "metrics.json").symlink_to(linked_run / "metrics.json")
    victim = tmp_path / "victim.md"
    victim.write_text("keep me")
    (sweep / "table1.md").symlink_to(victim)

    paths = table1.report(sweep, checkpoints=False)
    page = paths["report_html"].read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert "Samples of each run" not in page
    out = capsys.readouterr().out
    assert f"skipping {run / 'samples.png'}: it is a symbolic link" in out
    assert f"skipping {sweep / '2' / 'metrics.json'}" in out
    assert "77.77" not in (sweep / "table1.md").read_text()  # the linked runs are not in it
    assert victim.read_text() == "keep me" and not (sweep / "table1.md").is_symlink()


def test_run_outputs_replace_a_link_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.json", "samples.png"):
        (run / name).symlink_to(victim)
    write_json_atomic(run / "metrics.json", {"a": 1})
    save_sample_grid(small_model(input_dim=36).float(), (6, 6), run / "samples.png", n=4)
    assert victim.read_text() == "keep me"
    assert not (run / "metrics.json").is_symlink() and not (run / "samples.png").is_symlink()
    assert (run / "samples.png").read_bytes().startswith(b"\x89PNG")


# --- damaged files: one line ----------------------------------------------------------------------
def _error_line(capsys, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_table1_names_a_metrics_json_that_is_not_json(tmp_path, capsys):
    run = _run_dir(tmp_path / "sweep")
    (run / "metrics.json").write_text('{"test/nll": 1')  # cut off mid-write by another tool
    err = _error_line(capsys, table1.main, [str(tmp_path / "sweep"), "--no-checkpoints"])
    assert err.startswith(f"error: {run / 'metrics.json'} is not valid JSON")


def test_table2_names_a_switch_metrics_json_that_is_not_json(tmp_path, capsys):
    run = _run_dir(tmp_path / "sweep")
    (run / "switch_metrics.json").write_bytes(b"\xff\xfe")
    err = _error_line(capsys, table2.main, [str(tmp_path / "sweep")])
    assert err.startswith(f"error: {run / 'switch_metrics.json'} is not valid JSON")


def test_reproduction_report_names_an_eval_json_that_is_not_json(tmp_path, capsys):
    bad = tmp_path / "study" / "0" / "checkpoints" / "snapshots" / "step1.eval.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("not json")
    argv = ["report", str(tmp_path / "study"), "--out", str(tmp_path / "out")]
    err = _error_line(capsys, reproduction.main, argv)
    assert err.startswith(f"error: {bad} is not valid JSON")


def test_table1_on_an_unreadable_checkpoint_is_one_line(tmp_path, capsys):
    run = _run_dir(tmp_path / "sweep")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    err = _error_line(capsys, table1.main, [str(tmp_path / "sweep"), "--ks", "1"])
    assert "last.ckpt" in err and err.startswith("error: ")


# --- data of another image size -------------------------------------------------------------------
def test_eval_data_path_of_another_image_size_names_both_pixel_counts(tmp_path):
    rng = np.random.default_rng(0)
    small, large = tmp_path / "28.npz", tmp_path / "32.npz"
    np.savez(small, all=rng.random((300, 28, 28), dtype=np.float32))
    np.savez(large, all=rng.random((300, 32, 32), dtype=np.float32))
    ckpt = tmp_path / "run.ckpt"
    save_untrained_checkpoint(ckpt, ["data=npz", f"data.path={small}", "data.split=[200,50,50]"])
    with pytest.raises(UserError) as err:
        load_run(ckpt, data_path=str(large))
    message = str(err.value)
    assert "1024 pixels an image (32x32)" in message and "trained on 784 pixels" in message
    assert "weights do not fit" not in message
