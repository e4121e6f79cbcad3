"""Checkpoint files: loaded without running code, written so that a kill never corrupts them.

- A crafted checkpoint that runs a command when unpickled is refused everywhere a checkpoint
  is read (resume, Lightning's own loader, fine-tuning), and the command never runs.
- Every ``torch.load`` in the repository passes ``weights_only=True`` (checked on the AST), and
  nothing unpickles or extracts archives behind the safe loaders' backs.
- Checkpoint and metrics.json writers killed (SIGKILL) mid-write leave the previous complete
  file in place.
"""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from iwae.errors import UserError
from iwae.launch.assembly import load_init_weights, load_run
from iwae.launch.run import train
from iwae.training.checkpointing import AtomicCheckpointIO, load_checkpoint
from iwae.training.outputs import write_json_atomic
from tests.helpers import (
    ROOT,
    compose_config,
    no_wandb_env,
    run_train,
    save_untrained_checkpoint,
)
from tests.test_plugins import plugin_dir  # noqa: F401 - the fixture

MARKER_NAME = "pwned"


class RunsCode:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    path, marker = tmp_path / "evil.ckpt", tmp_path / MARKER_NAME
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def test_crafted_file_really_runs_code_when_unpickled(crafted):
    """The control: an unsafe load of the file does run the command."""
    path, marker = crafted
    torch.load(path, weights_only=False)  # on purpose: proves the file is live
    assert marker.exists()


def test_safe_loader_refuses_crafted_checkpoint(crafted):
    path, marker = crafted
    with pytest.raises(UserError, match="refused to load .* could run code"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="refused to load"):  # Lightning's path: cannot opt out
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_resume_fine_tune_and_eval_refuse_crafted_checkpoint(crafted, tmp_path):
    path, marker = crafted
    overrides = ["logger=none", "schedule.epochs=1", "trainer.enable_progress_bar=false"]
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="refused to load"):
        train(compose_config([*overrides, f"ckpt_path={path}"], run_dir), run_dir)
    with pytest.raises(UserError, match="refused to load"):
        load_init_weights(torch.nn.Linear(2, 2), path)
    with pytest.raises(UserError, match="refused to load"):  # mode=eval
        load_run(path)
    assert not marker.exists() and not (run_dir / "metrics.json").exists()


def _python_files() -> list[Path]:
    """The code that runs for users (tests craft pickles on purpose)."""
    skip = {".venv", "outputs", "multirun", "data", ".git", "tests"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def _name(node: ast.AST) -> str:
    return ast.unparse(node) if isinstance(node, ast.AST) else ""


def test_every_torch_load_is_weights_only_and_nothing_else_unpickles():
    problems = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func, where = _name(node.func), f"{path.relative_to(ROOT)}:{node.lineno}"
            kwargs = {k.arg: k.value for k in node.keywords}
            if func == "torch.load":
                value = kwargs.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if func in ("pickle.load", "pickle.loads", "torch.hub.load"):
                problems.append(f"{where}: {func}")
            if func.endswith("np.load") or func.endswith("numpy.load"):
                value = kwargs.get("allow_pickle")
                if isinstance(value, ast.Constant) and value.value is True:
                    problems.append(f"{where}: np.load(allow_pickle=True)")
            if func.endswith(".extractall") or func.endswith(".extract"):
                # No archive is extracted today; one that is must stay inside the data
                # directory (tarfile filter="data", zip member paths checked) and be tested.
                problems.append(f"{where}: archive extraction; make it path-safe and test it")
    assert not problems, "\n".join(problems)


# --- atomic writes under SIGKILL ---------------------------------------------------------------
def _kill_writer_mid_write(write, seconds: float) -> None:
    """Fork a child that calls ``write(i)`` for i = 0, 1, ... and SIGKILL it after ``seconds``.

    The child inherits the imported modules, so each kill costs no interpreter start-up.
    """
    pid = os.fork()
    if pid == 0:  # child: write until killed
        try:
            for i in range(1_000_000):
                write(i)
        finally:
            os._exit(0)
    time.sleep(seconds)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_checkpoint_and_metrics_writes_survive_sigkill(tmp_path):
    rng = random.Random(time.time_ns())
    ckpt, metrics = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "metrics.json"
    weights = torch.randn(4_000_000)  # 16 MB: most of the child's time is spent mid-write
    io = AtomicCheckpointIO()

    def write(i: int) -> None:
        # No tensor arithmetic here: in a forked child torch's thread pool could deadlock.
        io.save_checkpoint({"state_dict": {"w": weights}, "step": i}, ckpt)
        write_json_atomic(metrics, {"step": i, "values": [i] * 50_000})

    write(0)
    interrupted = 0
    for _ in range(20):  # until two kills landed mid-write: on a loaded machine one in 5 may
        _kill_writer_mid_write(write, rng.uniform(0.2, 1.5))
        interrupted += any(p.suffix == ".tmp" for p in tmp_path.rglob(".*"))
        checkpoint = load_checkpoint(ckpt)  # a complete file, whichever step it holds
        assert torch.equal(checkpoint["state_dict"]["w"], weights)
        saved = json.loads(metrics.read_text())
        assert saved["values"] == [saved["step"]] * 50_000
        if interrupted >= 2:
            break
    assert interrupted, "no kill landed during a write: the test did not test anything"
    write(1)  # the next save clears the temp files killed writes left behind
    assert not list(ckpt.parent.glob(".*.tmp"))
    assert not list(tmp_path.glob(".metrics.json.*.tmp"))  # metrics.json shares the writer


# --- the stored run config: only this project's classes are ever built -----------------------
GROUPS = ("model", "objective", "data", "schedule", "optimizer")


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict:
    """A checkpoint as train.py writes it (weights + resolved iwae_config), as a dict."""
    path = tmp_path_factory.mktemp("genuine") / "run.ckpt"
    save_untrained_checkpoint(path, [])
    return torch.load(path, weights_only=True)


def _crafted(genuine: dict, tmp_path: Path, key: str, node) -> Path:
    checkpoint = {**genuine, "iwae_config": {**genuine["iwae_config"], key: node}}
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path


def _payloads(victim: Path, copy: Path) -> dict[str, tuple[str, object]]:
    """(group, stored node) that call code through Hydra if the node is instantiated."""
    truncate = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    copy_file = {"_target_": "shutil.copyfile", "src": str(victim), "dst": str(copy)}
    model = "iwae.model.IWAEModel"
    return {
        "open truncates": ("model", truncate),
        "copyfile copies": ("data", copy_file),
        "nested in objective": (
            "objective",
            {"_target_": "iwae.objectives.Staged", "first": truncate, "second": truncate},
        ),
        "nested in a list": ("model", {"_target_": model, "hidden_dims": [[copy_file]]}),
        "_args_": ("model", {"_target_": model, "_args_": [copy_file]}),
        "_partial_": ("model", {"_target_": model, "_partial_": True}),
        "interpolation": ("model", {"_target_": model, "latent_dims": "${oc.decode:'[5]'}"}),
        "data target in model": ("model", {"_target_": "datamodules.NpzDataModule"}),
    }


def test_crafted_config_really_calls_code_when_instantiated(tmp_path):
    """The control: Hydra runs the payloads the loader must refuse."""
    from hydra.utils import instantiate

    victim, copy = tmp_path / "victim.txt", tmp_path / "copy.txt"
    victim.write_text("precious")
    payloads = _payloads(victim, copy)
    instantiate(payloads["copyfile copies"][1])
    instantiate(payloads["open truncates"][1]).close()
    assert copy.read_text() == "precious" and victim.read_text() == ""


@pytest.mark.parametrize("case", list(_payloads(Path("v"), Path("c"))))
def test_loaders_refuse_a_stored_config_that_calls_other_code(case, genuine, tmp_path):
    from iwae.reports.binarization import load_run as study_load_run

    victim, copy = tmp_path / "victim.txt", tmp_path / "copy.txt"
    victim.write_text("precious")
    group, node = _payloads(victim, copy)[case]
    path = _crafted(genuine, tmp_path, group, node)
    with pytest.raises(UserError, match=r"^refused to rebuild .*crafted\.ckpt: ") as err:
        load_run(path)  # mode=eval and iwae.reports.table1
    assert "\n" not in str(err.value)
    (tmp_path / "checkpoints").mkdir()
    path.rename(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match="refused to rebuild"):
        study_load_run(tmp_path)
    assert victim.read_text() == "precious" and not copy.exists()


def test_mode_eval_refuses_a_crafted_config_in_one_line(genuine, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    truncate = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    path = _crafted(genuine, tmp_path, "model", truncate)
    args = ["mode=eval", f"ckpt_path={path}", "logger=none"]
    proc = run_train(args, run_dir=tmp_path / "run", env=no_wandb_env(), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: refused to rebuild")
    assert victim.read_text() == "precious" and not (tmp_path / "run" / "metrics.json").exists()


def test_genuine_checkpoint_is_rebuilt(genuine, tmp_path):
    path = tmp_path / "genuine.ckpt"
    torch.save(genuine, path)
    assert load_run(path).model.input_dim == 784


def _conf_targets() -> set[tuple[str, str]]:
    """(group, _target_) of every class conf/ builds in the rebuilt groups, experiments too."""
    import yaml

    found: set[tuple[str, str]] = set()

    def walk(group: str, node) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                found.add((group, node["_target_"]))
            for value in node.values():
                walk(group, value)

    for group in GROUPS:
        for file in (ROOT / "conf" / group).glob("*.yaml"):
            walk(group, yaml.safe_load(file.read_text()))
    for file in (ROOT / "conf" / "experiment").glob("*.yaml"):
        preset = yaml.safe_load(file.read_text()) or {}
        for group in GROUPS:
            walk(group, preset.get(group))
    return found


def test_allow_list_covers_every_target_in_conf_and_each_is_importable():
    from hydra.utils import get_class

    from iwae.launch.allowlist import ALLOWED_TARGETS

    targets = _conf_targets()
    assert {g for g, _ in targets} == set(GROUPS)  # the walk found every group
    missing = [(g, t) for g, t in targets if t not in ALLOWED_TARGETS[g]]
    assert not missing, f"add these to iwae/launch/allowlist.py: {missing}"
    for group in GROUPS:
        for target in ALLOWED_TARGETS[group]:
            get_class(target)


# --- plug-ins: trusted by the command, never by the checkpoint ----------------------------------
def _with_objective(genuine: dict, tmp_path: Path, objective: dict, **extra) -> Path:
    """``genuine`` with its stored objective replaced, and top-level ``extra`` keys stored."""
    config = {**genuine["iwae_config"], "objective": objective, **extra}
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir(exist_ok=True)
    torch.save({**genuine, "iwae_config": config}, path)
    return path


def test_a_plug_in_is_rebuilt_only_when_this_command_trusts_it(
    genuine,
    plugin_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from tests.test_plugins import BOUND, MODULE

    monkeypatch.delenv("IWAE_PLUGINS", raising=False)
    bound = {"_target_": BOUND, "k": 5, "estimator": "reparam", "temperature": 0.5}
    path = _with_objective(genuine, tmp_path, bound, plugins=[MODULE])  # stored: ignored
    with pytest.raises(UserError, match=r"^refused to rebuild .*last\.ckpt: ") as err:
        load_run(path)
    assert str(err.value).endswith(
        f"add plugins=[{MODULE}] or set IWAE_PLUGINS={MODULE} if you trust that module"
    )
    assert load_run(path, plugins=[MODULE]).config.objective.temperature == 0.5
    monkeypatch.setenv("IWAE_PLUGINS", MODULE)
    assert load_run(path).config.objective._target_ == BOUND


DEFINED_ELSEWHERE = "not a class or function defined in the trusted module userbound"


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("userbound_evil.Evil", "add plugins=[userbound_evil]"),  # the trusted one's neighbour
        ("userbound.os.system", DEFINED_ELSEWHERE),  # an attribute the module imported
        ("userbound.Path", DEFINED_ELSEWHERE),  # a class imported there, defined elsewhere
        ("userbound.__builtins__.open", "no name with a part starting with _"),
        ("userbound.TemperedIWAE.__init__", "no name with a part starting with _"),
    ],
)
def test_trusting_a_module_trusts_nothing_beside_it(
    target,
    why,
    genuine,
    plugin_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from tests.test_plugins import MODULE

    monkeypatch.setenv("IWAE_PLUGINS", MODULE)
    marker = tmp_path / "neighbour-ran"
    path = _with_objective(genuine, tmp_path, {"_target_": target, "marker": str(marker)})
    with pytest.raises(UserError, match=r"^refused to rebuild .*: objective\._target_ names") as e:
        load_run(path)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
