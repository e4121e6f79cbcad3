"""The extension guide (docs/extending.md) works as written: its examples under ``examples/``
(a bound, a network, a data set of one's own) go through every tool, its listings are those
files, its stated cost is what they measure, and every Python block of the guide and of the
README's "Use from Python" section runs.

How a page's Python blocks are run: every fenced block opened with ```` ```python ```` is
executed, in page order, in one namespace per page, in a fresh working directory, with the
example folders importable (as ``PYTHONPATH=examples/...`` makes them on the command line).
Training runs are shrunk so that a block runs in seconds: every ``iwae.train`` call gets
`SHRINK` appended (200 training images, one epoch, eval.k=20, no logger); all else runs as
written. A block whose first line is ``# examples/<file>`` is a listing: it must be that file,
comment line aside, character for character.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import signal
import sys
import tokenize
from pathlib import Path

import pytest

import iwae
import iwae.api
from tests.helpers import ROOT, TINY_CKPT, run_train, signal_at, train_env

EXAMPLES = ROOT / "examples"
GUIDE = ROOT / "docs" / "extending.md"
FOLDERS = ("tempered_bound", "small_network", "my_dataset")
SHRINK = ["data.split=[200,50,50]", "eval.k=20", "eval.val_k=5", "logger=none"]
SHRINK += ["schedule.epochs=1", "trainer.enable_progress_bar=false"]

# Each example as a run uses it from the command line, without a config file of its own.
BOUND = ("mybound", ["objective._target_=mybound.TemperedIWAE", "+objective.temperature=0.5"])
NETWORK = ("mynet", ["~model", "+model._target_=mynet.ReluMLP", "+model.latent=8"])
DATASET = ("mydata", ["~data", "+data._target_=mydata.BarsDataModule", "+data.seed=${seed}"])
DATASET[1].append("+data.split=[200,50,50]")  # TINY_CKPT's data.split, for a data group of its own


# --- the guide's Python blocks ------------------------------------------------------------------
def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of ``text``."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, i = i + 1, i + 1
            while not lines[i].lstrip().startswith("```"):
                i += 1
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


def readme_api_section() -> str | None:
    """The README's "## Use from Python" section, if the README has one."""
    text = (ROOT / "README.md").read_text()
    if "\n## Use from Python\n" not in text:
        return None
    return text.split("\n## Use from Python\n", 1)[1].split("\n## ", 1)[0]


LISTINGS = [
    (line, code) for line, code in python_blocks(GUIDE.read_text()) if code[:11] == "# examples/"
]


def test_the_guide_has_python_blocks_and_listings():
    assert len(python_blocks(GUIDE.read_text())) >= 4
    assert {code.splitlines()[0] for _, code in LISTINGS} >= {
        "# examples/tempered_bound/mybound.py"
    }


@pytest.mark.parametrize("line, code", LISTINGS)
def test_a_listing_is_its_example_file(line, code):
    first, _, body = code.partition("\n")
    assert body == (ROOT / first[2:]).read_text(), f"extending.md:{line} differs from {first[2:]}"


@pytest.fixture
def block_runner(tmp_path, monkeypatch):
    """Runs a page's blocks as the module docstring says; returns the namespace."""
    monkeypatch.chdir(tmp_path)
    for folder in FOLDERS:
        monkeypatch.syspath_prepend(str(EXAMPLES / folder))
    real_train = iwae.api.train

    def shrunk(overrides=(), output_dir=None, **kwargs):
        return real_train([*overrides, *SHRINK], output_dir, **kwargs)

    monkeypatch.setattr(iwae.api, "train", shrunk)

    def run(blocks: list[tuple[int, str]], page: str) -> dict:
        namespace: dict = {"__name__": "__guide__"}
        for line, code in blocks:
            try:
                exec(compile(code, f"{page}:{line}", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"{page}:{line}: {type(err).__name__}: {err}") from err
        return namespace

    yield run
    for name in ("mybound", "mynet", "mydata"):
        sys.modules.pop(name, None)


def test_every_python_block_of_the_guide_runs(block_runner):
    namespace = block_runner(python_blocks(GUIDE.read_text()), "extending.md")
    assert "metrics" in namespace and "test/nll" in namespace["metrics"]


def test_every_python_block_of_the_readme_section_runs(block_runner):
    section = readme_api_section()
    if section is None:
        pytest.skip("README.md has no section 'Use from Python' yet")
    namespace = block_runner(python_blocks(section), "README.md")
    assert "run" in namespace and "ll" in namespace


# --- what a new bound costs -------------------------------------------------------------------
def code_lines(path: Path) -> int:
    """Lines of code in ``path``: not blank, not a comment, not a docstring."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT):
            if tok.type not in (tokenize.DEDENT, tokenize.ENDMARKER):
                code.update(range(tok.start[0], tok.end[0] + 1))
    return len(code - docstrings)


def test_the_guide_states_what_a_new_bound_costs():
    """The numbers the guide gives are the example's: its files and their lines of code."""
    text = GUIDE.read_text()
    match = re.search(r"(\d+) files?, (\d+) lines of Python \((\d+) of them code\)", text)
    assert match, (
        "the guide states no cost as '<n> file(s), <n> lines of Python (<n> of them code)'"
    )
    bound = EXAMPLES / "tempered_bound" / "mybound.py"
    files, lines, code = (int(g) for g in match.groups())
    assert (files, lines, code) == (1, len(bound.read_text().splitlines()), code_lines(bound))


# --- each example through every tool ---------------------------------------------------------
def _env(tmp_path: Path, modules: list[str], trust: bool) -> dict[str, str]:
    path = os.pathsep.join([*(str(EXAMPLES / f) for f in FOLDERS), str(ROOT)])
    return train_env(tmp_path, PYTHONPATH=path, IWAE_PLUGINS=",".join(modules) if trust else "")


CASES = {
    "all three": [BOUND, NETWORK, DATASET],
    "bound": [BOUND],
    "network": [NETWORK],
    "dataset": [DATASET],
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=[] if c == "all three" else pytest.mark.slow) for c in CASES],
)
def test_an_example_trains_resumes_evaluates_with_ais_and_is_reported(tmp_path, case):
    """Killed mid-run, resumed with ``resume=true`` to the end, evaluated by ``mode=eval``
    with AIS and BDMC, and reported by ``iwae.reports.table1``: trusted by ``plugins=`` on
    the command line and by ``$IWAE_PLUGINS`` for the report."""
    modules = [module for module, _ in CASES[case]]
    overrides = [arg for _, args in CASES[case] for arg in args]
    plugins = f"plugins=[{','.join(modules)}]"
    tiny = [o for o in TINY_CKPT if not (DATASET in CASES[case] and o.startswith("data."))]
    args = [*tiny, "threads=1", plugins, *overrides]
    run_dir, env = tmp_path / "run", _env(tmp_path, modules, trust=False)
    killed = run_train([*args, *signal_at(6)], run_dir=run_dir, env=env, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_train([*args, "resume=true"], run_dir=run_dir, env=env)
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 30
    if BOUND in CASES[case]:
        assert metrics["objective"] == "tempered"
    if DATASET in CASES[case]:
        assert metrics["data"] == "bars"

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    annealing = ["eval.ais.steps=3", "eval.ais.chains=2", "eval.ais.images=3"]
    annealing += ["eval.bdmc.images=2", "eval.bdmc.steps=3"]
    evaluation = ["mode=eval", f"ckpt_path={ckpt}", "eval.k=10", *annealing, "logger=none"]
    refused = run_train(evaluation, run_dir=tmp_path / "refused", env=env, check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert any(f"add plugins=[{m}] or set IWAE_PLUGINS={m}" in refused.stderr for m in modules)
    run_train([*evaluation, plugins], run_dir=tmp_path / "eval", env=env)
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test/nll"] == metrics["test/nll"]  # the run's own estimate, exactly
    assert evaluated["test/ais_images"] == 3 and evaluated["bdmc/images"] == 2

    report = table1(run_dir, _env(tmp_path, modules, trust=True), "--no-checkpoints")
    assert ("TEMPERED" if BOUND in CASES[case] else "IWAE") in report.upper()


def table1(run_dir: Path, env: dict[str, str], *flags: str) -> str:
    """``python -m iwae.reports.table1 <run>``; its output. Without ``--no-checkpoints`` its
    figures load the model (the bound against k, units, the sample grid)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "iwae.reports.table1", str(run_dir), "--ks", "1,2", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "table1.csv").is_file()
    return proc.stdout


def test_the_report_figures_load_a_network_of_ones_own(tmp_path):
    """The Table 1 report's figures rebuild a trusted plug-in network from its checkpoint."""
    run_dir = tmp_path / "run"
    env = _env(tmp_path, ["mynet"], trust=True)
    run_train([*TINY_CKPT, "threads=1", "plugins=[mynet]", *NETWORK[1]], run_dir=run_dir, env=env)
    out = table1(run_dir, env)
    assert (run_dir / "bound_vs_k.png").is_file(), out
    assert (run_dir / "samples_reconstructions.png").is_file(), out  # data and samples


def test_config_files_of_ones_own_are_found_with_hydra_searchpath(tmp_path):
    """``objective=tempered``, ``model=relu_mlp``, ``data=bars``: each example's config file,
    found through ``hydra.searchpath``, composes the plug-in as the built-in names do."""
    searchpath = ",".join(f"file://{EXAMPLES / f / 'conf'}" for f in FOLDERS)
    args = ["objective=tempered", "model=relu_mlp", "data=bars", f"hydra.searchpath=[{searchpath}]"]
    args += ["plugins=[mybound,mynet,mydata]", "--cfg", "job"]
    proc = run_train(
        args, env=_env(tmp_path, ["mybound", "mynet", "mydata"], trust=False), check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for target in ("mybound.TemperedIWAE", "mynet.ReluMLP", "mydata.BarsDataModule"):
        assert f"_target_: {target}" in proc.stdout
