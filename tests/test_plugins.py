"""A researcher's own bound and network, trusted by the command and never by a file.

- Trust comes from ``plugins=[...]``, ``$IWAE_PLUGINS`` and installed entry points
  (``iwae.plugins``); it covers classes and functions defined in the module and its
  submodules only: not a neighbour module, not an attribute imported into the module, not a
  name with a part starting with ``_``.
- A plug-in bound (``TemperedIWAE(IWAE)`` with one extra argument, in a module outside the
  package) trains, resumes, is evaluated with AIS by ``mode=eval`` and reported by
  ``iwae.reports.table1`` when trusted; each is refused in one line when not.
- The model contract (`iwae.contract`) is checked when a model is built: a missing method
  is one line naming it and the tool that needs it; a missing ``sample`` skips the grid with
  one warning; ``init_output_bias`` is optional.
- ``hydra.searchpath`` adds the user's own config files: ``objective=tempered``.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from iwae.errors import UserError
from iwae.launch import plugins
from iwae.launch.plugins import (
    check_fused_member,
    check_run_targets,
    import_plugins,
    is_trusted_target,
    trusted_modules,
)
from tests.helpers import FAST, ROOT, TINY, compose_config, run_train, train_env

MODULE = "userbound"  # the plug-in these tests write; a name no other test uses
BOUND = f"{MODULE}.TemperedIWAE"

PLUGIN = '''
"""A user's own bound and a network that has only what training needs."""

import os  # noqa: F401 - an attribute a crafted target could try: userbound.os.system
from pathlib import Path  # noqa: F401 - a class imported here, not defined here

import torch

from iwae.model import IWAEModel
from iwae.objectives import IWAE


class TemperedIWAE(IWAE):
    """The IWAE bound, trained on tempered normalised weights."""

    name = "tempered"

    def __init__(self, k, estimator="reparam", temperature=1.0):
        super().__init__(k, estimator)
        self.temperature = temperature

    def surrogate(self, log_w, detached):
        return (torch.softmax(self.temperature * detached, 0) * log_w).sum(0)


class MinimalModel(torch.nn.Module):
    """log_weights, the parameter split and encoder_means: no log_joint, no sample, no
    init_output_bias."""

    def __init__(self, input_dim, latent_dims=(4,), hidden_dims=((8,),)):
        super().__init__()
        self.inner = IWAEModel(input_dim, latent_dims, hidden_dims)
        self.input_dim = input_dim

    def log_weights(self, x, k, generator=None, detach_q=False):
        return self.inner.log_weights(x, k, generator=generator, detach_q=detach_q)

    def generative_parameters(self):
        return self.inner.generative_parameters()

    def inference_parameters(self):
        return self.inner.inference_parameters()

    def encoder_means(self, x, n_samples=100, generator=None):
        return self.inner.encoder_means(x, n_samples, generator)
'''
SUBMODULE = '''
from iwae.model import IWAEModel


class WideModel(IWAEModel):
    """A network in a submodule of the trusted module."""
'''
NEIGHBOUR = """
from pathlib import Path


class Evil:
    def __init__(self, *args, **kwargs):
        Path(kwargs.get("marker", "neighbour-ran")).write_text("ran")
"""


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """``userbound/`` (a package with a submodule) and its neighbour ``userbound_evil.py``,
    importable by this process and by the runs it starts (PYTHONPATH)."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / MODULE).mkdir()
    (folder / MODULE / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (folder / MODULE / "sub.py").write_text(textwrap.dedent(SUBMODULE))
    (folder / f"{MODULE}_evil.py").write_text(textwrap.dedent(NEIGHBOUR))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE)]:
        del sys.modules[name]


@pytest.fixture
def no_env_trust(monkeypatch):
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)


# --- what trust covers ---------------------------------------------------------------------------
def test_a_trusted_module_covers_its_own_classes_and_submodules_only(plugin_dir):
    trusted = (MODULE,)
    assert is_trusted_target(BOUND, trusted)
    assert is_trusted_target(f"{MODULE}.sub.WideModel", trusted)
    refused = [
        f"{MODULE}_evil.Evil",  # a neighbour whose name starts the same
        f"{MODULE}.os.system",  # an attribute imported into the module
        f"{MODULE}.Path",  # a class imported, not defined, there
        f"{MODULE}.torch.nn.Linear",
        f"{MODULE}.__builtins__.open",
        f"{MODULE}.TemperedIWAE.__init__",
        f"{MODULE}.NoSuchClass",
        MODULE,
    ]
    assert [t for t in refused if is_trusted_target(t, trusted)] == []
    assert not is_trusted_target(BOUND, ())  # nothing trusted, nothing allowed
    assert not is_trusted_target("iwae.objectives.IWAE", ("iwae",))  # the allow-list's job


def test_trust_comes_from_plugins_the_environment_and_entry_points(monkeypatch):
    class EntryPoint:
        module = "installed_pkg.bounds"

    monkeypatch.setenv(plugins.ENV_VAR, "envmod, other.sub,")
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [EntryPoint()])
    assert trusted_modules(["cli_mod", "envmod"]) == (
        "cli_mod", "envmod", "other.sub", "installed_pkg.bounds",
    )  # fmt: skip
    assert trusted_modules("cli_mod") == ("cli_mod", "envmod", "other.sub", "installed_pkg.bounds")
    with pytest.raises(UserError, match=r"plugins names 'my bound', which is not a module name"):
        trusted_modules(["my bound"])
    with pytest.raises(UserError, match=r"cannot be imported .* PYTHONPATH") as err:
        import_plugins(["no_such_module_of_yours"])
    assert "'no_such_module_of_yours'" in str(err.value) and "\n" not in str(err.value)


def test_training_refuses_an_untrusted_target_before_torch(plugin_dir, tmp_path):
    """What trains can later be evaluated and reported: the same trust, asked for at once."""
    config = {"objective": {"_target_": BOUND, "k": 5}, "model": {"_target_": "iwae.model.X"}}
    with pytest.raises(UserError, match=r"add plugins=\[userbound\] or set IWAE_PLUGINS=userb"):
        check_run_targets(config, ())
    check_run_targets(config, (MODULE,))
    args = [*FAST, f"objective._target_={BOUND}", "+objective.temperature=0.5"]
    env = train_env(tmp_path, PYTHONPATH=str(plugin_dir), IWAE_PLUGINS="")
    proc = run_train(args, run_dir=tmp_path / "run", env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: objective._target_='{BOUND}' is not one of this project's classes nor in a "
        f"trusted plug-in module; add plugins=[{MODULE}] or set IWAE_PLUGINS={MODULE} if you "
        "trust that module"
    )
    assert not (tmp_path / "run").exists()  # refused: no run directory left behind


def test_the_fused_launcher_refuses_a_plug_in_member_in_one_line(plugin_dir, no_env_trust):
    cfg = compose_config(
        [*FAST, f"objective._target_={BOUND}", f"plugins=[{MODULE}]"], Path("unused")
    )
    with pytest.raises(UserError, match=rf"hydra/launcher=fused .* objective {BOUND}: train"):
        check_fused_member(cfg)
    check_fused_member(compose_config(FAST, Path("unused")))  # the project's own: fused


# --- the contract, at construction ---------------------------------------------------------------
def _minimal(overrides: list[str], tmp_path: Path):
    from iwae.launch.assembly import build, build_module

    model = [f"model._target_={MODULE}.MinimalModel", f"plugins=[{MODULE}]"]
    cfg = compose_config([*FAST, *model, *overrides], tmp_path)
    datamodule = build(cfg.data)
    datamodule.prepare()
    return build_module(cfg, datamodule)


def test_a_model_without_what_a_tool_needs_is_refused_when_built(plugin_dir, tmp_path, caplog):
    with pytest.raises(UserError) as err:
        _minimal(["eval.ais.steps=2", "eval.ais.images=2"], tmp_path)
    assert str(err.value) == (
        f"model {MODULE}.MinimalModel has no log_joint, which eval.ais needs; see docs/extending.md"
    )
    with caplog.at_level(logging.WARNING):
        module = _minimal([], tmp_path)  # no AIS asked for: it builds (no init_output_bias)
    assert f"model {MODULE}.MinimalModel has no sample, so the sample grid is skipped" in (
        caplog.text
    )
    assert module.model.input_dim == 784


def test_an_objective_without_a_bound_is_refused_when_built(tmp_path):
    from iwae import contract

    class NotABound:
        name, k, num_samples = "nope", 1, 1

        def __call__(self, model, x): ...

    with pytest.raises(UserError, match=r"objective .*NotABound has no bound, which training"):
        contract.check_objective(NotABound())


def test_a_resume_may_change_whom_it_trusts_and_whether_it_compiles():
    from iwae.training.resume import refused_changes

    stored = {"plugins": [], "compile": False, "k": 5}
    assert refused_changes(stored, {"plugins": [MODULE], "compile": True, "k": 5}) == []
    assert refused_changes(stored, {"plugins": [], "compile": False, "k": 6})  # k still fixed


# --- every tool, end to end -----------------------------------------------------------------------
def _table1(run_dir: Path, env: dict[str, str]):
    import subprocess

    cmd = [sys.executable, "-m", "iwae.reports.table1", str(run_dir), "--ks", "1,2"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_plug_in_bound_trains_resumes_evaluates_and_reports_when_trusted(plugin_dir, tmp_path):
    run_dir = tmp_path / "run"
    base = train_env(tmp_path, PYTHONPATH=f"{plugin_dir}:{ROOT}", IWAE_PLUGINS="")
    trusted = {**base, "IWAE_PLUGINS": MODULE}
    bound = [f"objective._target_={BOUND}", "+objective.temperature=0.5"]
    args = [*TINY, "logger=none", "threads=1", "eval.k=5", *bound]
    run_train([*args, f"plugins=[{MODULE}]"], run_dir=run_dir, env=base)
    assert json.loads((run_dir / "metrics.json").read_text())["objective"] == "tempered"

    more = [*args, "schedule.epochs=2", "resume=true"]  # trust from the environment this time
    refused = run_train(more, run_dir=run_dir, env=base, check=False)
    assert refused.returncode == 2 and "IWAE_PLUGINS=userbound" in refused.stderr
    run_train(more, run_dir=run_dir, env=trusted)
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 20

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    evaluate = ["mode=eval", f"ckpt_path={ckpt}", "logger=none", "threads=1", "eval.k=5",
                "eval.ais.steps=3", "eval.ais.chains=2", "eval.ais.images=4"]  # fmt: skip
    refused = run_train(evaluate, run_dir=tmp_path / "eval0", env=base, check=False)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and last.startswith("error: refused to rebuild"), last
    assert last.endswith(f"set IWAE_PLUGINS={MODULE} if you trust that module")
    run_train(evaluate, run_dir=tmp_path / "eval1", env=trusted)
    assert "test/nll_ais" in json.loads((tmp_path / "eval1" / "metrics.json").read_text())

    report = _table1(run_dir, base)
    assert report.returncode == 2 and "IWAE_PLUGINS=userbound" in report.stderr
    report = _table1(run_dir, trusted)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (run_dir / "bound_vs_k.json").is_file()  # the figure that loads the model


def test_a_config_group_file_of_the_users_own_is_chosen_like_the_built_in_ones(
    plugin_dir, tmp_path
):
    conf = tmp_path / "myconf" / "objective"
    conf.mkdir(parents=True)
    (conf / "tempered.yaml").write_text(
        f"_target_: {BOUND}\nk: ${{k}}\nestimator: reparam\ntemperature: 0.5\n"
    )
    env = train_env(tmp_path, PYTHONPATH=f"{plugin_dir}:{ROOT}", IWAE_PLUGINS=MODULE)
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"
    wrong = run_train(["objective=temperd", searchpath], env=env, check=False)
    assert "choose one of: " in wrong.stderr and "tempered" in wrong.stderr
    args = [*FAST, "objective=tempered", searchpath, "--cfg", "job"]
    shown = run_train(args, env=env)
    assert f"_target_: {BOUND}" in shown.stdout and "temperature: 0.5" in shown.stdout


def test_the_plug_in_model_evaluates_without_a_sample_grid(plugin_dir, tmp_path, monkeypatch):
    """mode=eval of a model that cannot draw samples: the evaluation is written, the grid is
    skipped with one warning."""
    from iwae.launch.eval_checkpoint import evaluate_checkpoint

    module = _minimal([], tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "iwae_config": module.config}, ckpt)
    monkeypatch.setenv(plugins.ENV_VAR, MODULE)
    out = tmp_path / "eval"
    cfg = compose_config(["mode=eval", f"ckpt_path={ckpt}", "eval.k=3", "logger=none"], out)
    metrics = evaluate_checkpoint(cfg, out)
    assert metrics["eval/k"] == 3 and (out / "metrics.json").is_file()
    assert not (out / "samples.png").exists()
