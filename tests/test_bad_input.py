"""Bad input: each case stops with one line naming the problem (and the fix) and writes
nothing that could pass for a result (no metrics.json, checkpoints or samples).

Most cases run in-process (``train()`` raises the `UserError` that train.py prints as
``error: <message>`` with exit status 2); a few go through ``python train.py`` to check that
path end to end, and the slow run repeats every case that way. The bad-input table of
docs/reliability.md lists the same cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iwae.errors import UserError
from iwae.launch.assembly import build
from iwae.launch.cli import CONF_DIR, check_overrides
from iwae.launch.config_check import check_override_keys, check_run_values
from iwae.launch.run import train
from tests.helpers import (
    FAST,
    compose_config,
    no_wandb_env,
    run_train,
    save_untrained_checkpoint,
)

NO_RESULT = ("metrics.json", "checkpoints", "samples.png")


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory) -> Path:
    """Good and bad .npz files, and checkpoints of the default and the two-layer model."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)

    def images(n: int, side: int = 28) -> np.ndarray:
        return rng.random((n, side, side), dtype=np.float32)

    np.savez(root / "good.npz", train=images(40), val=images(10), test=images(10))
    np.savez(root / "small.npz", train=images(40, 10), val=images(10, 10), test=images(10, 10))
    np.savez(root / "shape.npz", train=images(40), val=images(10, 14), test=images(10))
    np.savez(root / "range.npz", train=images(40) * 3, val=images(10), test=images(10))
    good = (root / "good.npz").read_bytes()
    (root / "truncated.npz").write_bytes(good[: len(good) // 2])
    for name, model in (("one_layer", "one_layer"), ("two_layer", "two_layer")):
        save_untrained_checkpoint(root / f"{name}.ckpt", [f"model={model}"])
    blob = (root / "one_layer.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(blob[: len(blob) // 3])
    return root


def npz(name: str, root: Path) -> list[str]:
    return ["data=npz", f"data.path={root / name}", "data.split=null"]  # the file's own splits


CASES = {
    # config values out of range
    "k=0": (["k=0"], "k must be an integer >= 1, got 0"),
    "eval.k=0": (["eval.k=0"], "eval.k must be an integer >= 1, got 0"),
    "eval.val_k=-1": (["eval.val_k=-1"], "eval.val_k must be an integer >= 1"),
    "batch_size=0": (["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    "epochs=0": (["schedule.epochs=0"], "schedule.epochs must be an integer >= 1, got 0"),
    "k=abc": (["k=abc"], "k must be an integer >= 1, got 'abc'"),
    # every key is checked before training
    "eval.bound_ks=[0,5]": (["eval.bound_ks=[0,5]"], "eval.bound_ks must be an integer >= 1"),
    "eval.max_bytes=1": (["eval.max_bytes=1"], "too small for one sample of one image (that takes"),
    "eval.max_bytes=lots": (["eval.max_bytes=lots"], "eval.max_bytes must be an integer >= 1"),
    "eval.active_threshold=abc": (["eval.active_threshold=abc"], "must be a finite number"),
    "eval.data_path in training": (["eval.data_path=x.npz"], "eval.data_path is for mode=eval"),
    "seed=-1": (["seed=-1"], "seed must be an integer from 0 to 4294967295, got -1"),
    "seed=abc": (["seed=abc"], "seed must be an integer from 0 to 4294967295, got 'abc'"),
    "optimizer.lr=-1": (["optimizer.lr=-1"], "optimizer.lr must be a finite number >= 0"),
    "optimizer.lr=nan": (["optimizer.lr=nan"], "optimizer.lr must be a finite number >= 0"),
    "threads=1.5": (["threads=1.5"], "threads must be an integer >= 1 or null"),
    "threads=0": (["threads=0"], "threads must be an integer >= 1 or null"),
    "resume=maybe": (["resume=maybe"], "resume must be true or false, got 'maybe'"),
    "hidden_dims=[[0]]": (["model.hidden_dims=[[0]]"], "model.hidden_dims must be one list"),
    "latent_dims=[0]": (["model.latent_dims=[0]"], "model.latent_dims must be positive integers"),
    "betas=[0.9,1.5]": (["optimizer.betas=[0.9,1.5]"], "optimizer.betas must be a finite number"),
    "stages=99": (["schedule=paper", "schedule.stages=99"], "schedule.stages must be at most 8"),
    "presets that do not compose": (
        ["experiment=table2_small", "schedule=constant"],
        "schedule.stages is not a setting of ConstantSchedule (it takes epochs)",
    ),
    "batch larger than the data": (["data.batch_size=201"], "larger than the training set (200"),
    "k out of memory": (["k=900000"], "one training step at k=900000"),
    "eval chunk out of memory": (
        ["eval.k=1000000", "eval.chunk_size=1000000"],
        "needs about",
    ),
    # every count has an upper limit, and AIS a budget of work per image
    "k above its limit": (["k=1000000000"], "k=1000000000 is above its limit of 1,000,000"),
    "threads=10000": (["threads=10000"], "threads=10000 is above its limit of 1,024"),
    "eval.ais.steps=1e9": (["eval.ais.steps=1000000000"], "eval.ais.steps=1000000000 is above"),
    "eval.ais.leapfrog": (["eval.ais.steps=10", "eval.ais.leapfrog=100000"], "eval.ais.leapfrog"),
    "eval.bdmc.images": (["eval.bdmc.images=100000000"], "eval.bdmc.images=100000000 is above"),
    "eval.bound_ks": (["eval.bound_ks=[1,100000000]"], "eval.bound_ks=[1, 100000000] is above"),
    "AIS work per image": (
        ["eval.ais.steps=100000", "eval.ais.chains=1000", "eval.ais.leapfrog=100"],
        "model gradients per image, above the limit of 1e+09",
    ),
    "schedule.epochs": (["schedule.epochs=100000000"], "schedule.epochs=100000000 is above"),
    "steps_per_batch": (["steps_per_batch=1000000"], "steps_per_batch=1000000 is above"),
    "data.split": (["data.split=[200,50,1000000000]"], "data.split=[200, 50, 1000000000] is"),
    "snapshots every_n_epochs": (
        ["callbacks=snapshots", "callbacks.snapshots.every_n_epochs=10000000"],
        "callbacks.snapshots.every_n_epochs=10000000 is above",
    ),
    # names a key chooses between, and the top-level switches
    "estimator": (["objective.estimator=drag"], "objective.estimator must be one of reparam"),
    "staged estimator": (
        ["objective=vae_to_iwae", "objective.second.estimator=drag"],
        "objective.second.estimator must be one of",
    ),
    "renyi dreg": (["objective=renyi", "objective.estimator=dreg"], "one of reparam, stl (Renyi"),
    "binarization": (["data.binarization=bernoulli"], "data.binarization must be one of dynamic"),
    "eval.ais.init": (["eval.ais.init=posterior"], "eval.ais.init must be one of q, prior"),
    "compile=yes": (["compile=yes"], "compile must be true or false, got 'yes'"),
    "plugins as a number": (["plugins=5"], "plugins must be a list of module names"),
    "plugins as a file": (["plugins=[my_lab/bounds.py]"], "'my_lab/bounds.py' is not a module"),
    # dataset files
    "missing data file": (["data=npz", "data.path=/none/x.npz"], "/none/x.npz"),
    "truncated data file": ("truncated.npz", "cannot read the .npz file"),
    "wrong-shape data": ("shape.npz", "images of different shapes"),
    "data outside [0, 1]": ("range.npz", "[0, 1]"),
    # checkpoints
    "missing checkpoint": (["ckpt_path=/nonexistent/x.ckpt"], "checkpoint not found"),
    "init_from missing": (["init_from=/nonexistent/x.ckpt"], "init_from: checkpoint not found"),
    "ckpt_path=last, none saved": (["ckpt_path=last"], "checkpoint not found"),
    "truncated checkpoint": ("ckpt:truncated.ckpt", "is truncated or not a PyTorch checkpoint"),
    "other architecture": ("ckpt:two_layer.ckpt", "is for another architecture or input size"),
    "other input size": ("ckpt-small:one_layer.ckpt", "is for another architecture or input"),
}


def overrides_for(case: str, root: Path) -> tuple[list[str], str]:
    spec, expected = CASES[case]
    if isinstance(spec, list):
        return spec, expected
    if spec.startswith("ckpt-small:"):
        return [*npz("small.npz", root), f"ckpt_path={root / spec.split(':')[1]}"], expected
    if spec.startswith("ckpt:"):
        return [f"ckpt_path={root / spec.split(':')[1]}"], expected
    return npz(spec, root), expected


def assert_one_line_and_no_result(message: str, expected: str, run_dir: Path) -> None:
    assert "\n" not in message and expected in message, message
    assert not any((run_dir / name).exists() for name in NO_RESULT)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_file_or_checkpoint(case, npz_dir, tmp_path):
    overrides, expected = overrides_for(case, npz_dir)
    cfg = compose_config([*FAST, "data.split=[200,50,50]", *overrides], tmp_path)
    with pytest.raises(UserError) as err:
        train(cfg, tmp_path)
    assert_one_line_and_no_result(str(err.value), expected, tmp_path)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["objective=iwea"], "unknown objective 'iwea'; choose one of:"),
        (["objective=vae,iwea"], "unknown objective 'iwea'"),
        (["objective.kk=5"], "unknown config key 'objective.kk' (did you mean objective.k?)"),
        (["kk=5"], "unknown config key 'kk' (did you mean k?); to add a new key on purpose"),
        (["objectve=vae"], "unknown config key 'objectve' (did you mean objective?)"),
        (["data.batch_sise=3"], "(did you mean data.batch_size?)"),
        (["trainer.devcies=2"], "(did you mean trainer.devices?)"),
        (["k=[1"], "cannot parse the override 'k=[1'"),
        (["+k=3"], "An item is already at 'k'. Drop the + to change its value"),
    ],
)
def test_unknown_or_misspelled_group_values_and_keys(argv, expected):
    message = check_overrides(argv) or check_override_keys(argv, CONF_DIR)
    assert message is not None and "\n" not in message and expected in message, message


@pytest.mark.parametrize(
    "argv", [["k=1,5", "objective=vae,iwae"], ["hydra.run.dir=/tmp/x", "+extra=1"], ["-m", "k=2"]]
)
def test_good_overrides_and_sweeps_pass(argv):
    assert check_overrides(argv) is None and check_override_keys(argv, CONF_DIR) is None


def run_and_check(args: list[str], expected: str, run_dir: Path) -> None:
    proc = run_train(args, run_dir=run_dir, env=no_wandb_env(), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and expected in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not any((run_dir / name).exists() for name in NO_RESULT)


def test_train_py_misspelled_key_exits_2_with_one_line(tmp_path):
    run_and_check([*FAST, "objective.kk=5"], "unknown config key 'objective.kk'", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_train_py_every_case_exits_2_with_one_line(case, npz_dir, tmp_path):
    overrides, expected = overrides_for(case, npz_dir)
    run_and_check([*FAST, "data.split=[200,50,50]", *overrides], expected, tmp_path)


def test_mode_eval_refuses_non_finite_weights_and_writes_nothing(npz_dir, tmp_path):
    from iwae.launch.eval_checkpoint import evaluate_checkpoint

    checkpoint = torch.load(npz_dir / "one_layer.ckpt", weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("model.decoder"))
    checkpoint["state_dict"][name][0] = float("nan")
    torch.save(checkpoint, tmp_path / "diverged.ckpt")
    cfg = compose_config([*FAST, "mode=eval", f"ckpt_path={tmp_path / 'diverged.ckpt'}"], tmp_path)
    with pytest.raises(UserError, match=rf"non-finite weights \({name}\)") as err:
        evaluate_checkpoint(cfg, tmp_path)
    assert_one_line_and_no_result(str(err.value), "evaluate an earlier checkpoint", tmp_path)


@pytest.mark.parametrize(
    "case", ["seed=abc", "threads=1.5", "resume=maybe", "k out of memory", "eval.bound_ks=[0,5]"]
)
def test_train_py_bad_values_exit_2_before_training(case, tmp_path):
    overrides, expected = CASES[case]
    run_and_check([*FAST, "threads=1", *overrides], expected, tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["threads=null", "optimizer.lr=0", "seed=4294967295", "eval.bound_ks=[1,5,50,500,5000]"],
        ["eval=none", "eval.k=0"],  # no final evaluation: its k is never used
        ["schedule=paper", "schedule.stages=8", "model=two_layer", "k=50"],
    ],
)
def test_values_hydra_accepts_and_the_run_can_use_pass(overrides, tmp_path):
    check_run_values(compose_config(["data.split=[200,50,50]", *overrides], tmp_path))


def test_quickstart_with_the_paper_schedule_composes(tmp_path):
    """Two documented options: the paper's learning-rate decay, cut at the preset's epochs."""
    cfg = compose_config(["experiment=quickstart", "schedule=paper"], tmp_path)
    check_run_values(cfg)
    schedule = build(cfg.schedule)
    assert schedule.epochs == cfg.schedule.epochs < sum(schedule.stage_epochs)
    assert schedule.lr_factor(schedule.epochs - 1) < schedule.lr_factor(0)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["eval.bound_ks=[0,5]"], "eval.bound_ks must be an integer >= 1"),
        (["threads=1.5"], "threads must be an integer >= 1 or null"),
        (["eval.k=100000", "eval.chunk_size=100000"], "lower eval.chunk_size or set eval.max"),
    ],
)
def test_mode_eval_checks_eval_values_before_evaluating(overrides, expected, npz_dir, tmp_path):
    from iwae.launch.eval_checkpoint import evaluate_checkpoint

    ckpt = f"ckpt_path={npz_dir / 'one_layer.ckpt'}"
    cfg = compose_config([*FAST, "mode=eval", ckpt, *overrides], tmp_path)
    with pytest.raises(UserError) as err:
        evaluate_checkpoint(cfg, tmp_path)
    assert_one_line_and_no_result(str(err.value), expected, tmp_path)


GROUPS = ("model", "objective", "data", "schedule", "optimizer")


@pytest.mark.parametrize(
    "choice",
    [
        f"{g}={p.stem}"
        for g in (*GROUPS, "experiment")
        for p in sorted((CONF_DIR / g).glob("*.yaml"))
    ],
)
def test_every_shipped_option_and_preset_passes_the_argument_check(choice, tmp_path):
    """The check of each group's keys against its class never refuses a config we ship."""
    from iwae.launch.config_check import check_arguments

    cfg = compose_config([choice], tmp_path)
    for group in GROUPS:
        check_arguments(group, cfg[group])


# --- answered before torch: paths, choices, counts -------------------------------------------
def precheck(argv: list[str]) -> str | None:
    return check_overrides(argv) or check_override_keys(argv, CONF_DIR)


def test_a_checkpoint_path_that_is_a_run_directory_names_the_checkpoint_inside(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    hint = f"did you mean {run / 'checkpoints' / 'last.ckpt'}?"
    for key in ("ckpt_path", "init_from"):
        assert precheck([f"{key}={run}"]) == (
            f"{key}={run} is a directory, not a checkpoint file; {hint}"
        )
    misspelt = precheck([f"ckpt_path={run / 'checkpoints' / 'lats.ckpt'}"])
    assert misspelt == f"checkpoint not found: {run / 'checkpoints' / 'lats.ckpt'}; {hint}"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "it holds no checkpoints/last.ckpt; pass ckpt_path=" in precheck([f"ckpt_path={empty}"])


def test_a_missing_data_path_is_refused_with_the_closest_name(tmp_path):
    (tmp_path / "digits.npz").write_bytes(b"")
    message = precheck(["data=npz", f"data.path={tmp_path / 'digit.npz'}"])
    assert message == (
        f"data.path {tmp_path / 'digit.npz'} does not exist; did you mean "
        f"{tmp_path / 'digits.npz'}?"
    )
    eval_path = [f"ckpt_path={tmp_path / 'digits.npz'}", "mode=eval"]
    assert "eval.data_path /none.npz does not exist" in precheck(
        [*eval_path, "eval.data_path=/none.npz"]
    )


def test_a_logger_directory_that_cannot_be_written_is_refused_before_lightning(tmp_path):
    """TensorBoard's answer was an OSError traceback from inside Lightning."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = precheck(["logger=tensorboard", f"logger.tensorboard.save_dir={blocker / 'tb'}"])
    assert message == (
        f"logger.tensorboard.save_dir={blocker / 'tb'} cannot be created: {blocker} is a file; "
        "pass logger.tensorboard.save_dir=<a writable directory>"
    )
    if Path("/sys").is_dir() and not _writable("/sys"):  # Linux, where sysfs takes no files
        message = precheck(["logger=tensorboard", "logger.tensorboard.save_dir=/sys/iwae_tb"])
        assert message.startswith("logger.tensorboard.save_dir=/sys/iwae_tb cannot be written")
    assert precheck(["logger=tensorboard", f"logger.tensorboard.save_dir={tmp_path}/tb"]) is None


def _writable(folder: str) -> bool:
    import tempfile

    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def test_the_precheck_choices_are_the_classes_own():
    """The names checked before torch loads are the ones the classes accept."""
    from datamodules.base import BINARIZATIONS
    from iwae import ais
    from iwae.launch import value_checks as plain
    from iwae.objective_base import ESTIMATORS
    from iwae.objectives import RWS, Renyi
    from iwae.training.nonfinite import NonFiniteGuard

    assert plain.ESTIMATORS == ESTIMATORS and plain.BINARIZATIONS == BINARIZATIONS
    assert plain.AIS_INITS == ais.INITS and plain.NONFINITE_ACTIONS == NonFiniteGuard.ACTIONS
    assert plain.NONFINITE_GUARD == f"{NonFiniteGuard.__module__}.NonFiniteGuard"
    for estimator in ESTIMATORS:
        takes = estimator in plain.ESTIMATORS_OF["iwae.objectives.Renyi"]
        try:
            Renyi(k=5, estimator=estimator)
        except UserError:
            assert not takes
        else:
            assert takes
    assert "estimator" not in RWS.__init__.__code__.co_varnames


def _count_keys() -> set[str]:
    """Every integer-valued key of every shipped config file, as a run names it."""
    from omegaconf import OmegaConf

    found: set[str] = set()

    def walk(node: object, key: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name != "defaults":
                    walk(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list):
            for value in node:
                walk(value, key)
        elif isinstance(node, int) and not isinstance(node, bool):
            found.add(key)

    for path in CONF_DIR.rglob("*.yaml"):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        prefix = "" if group in (".", "experiment", "debug", "hparams_search") else group
        if group.startswith("hydra"):
            continue  # Hydra's own settings
        walk(OmegaConf.to_container(OmegaConf.load(path)), prefix.replace("/", "."))
    return found


# Integer keys that are no count: seeds have their own range (MAX_SEED); the rest are flags.
NOT_COUNTS = {"seed", "eval.seed", "data.split_seed", "hydra.sweeper.sampler.seed"}


def test_every_count_a_shipped_config_holds_has_an_upper_limit():
    """The class, not the examples: a count added to conf/ without a limit fails here."""
    from fnmatch import fnmatch

    from iwae.launch.limits import COUNT_LIMITS

    counts = _count_keys() - NOT_COUNTS
    assert {"k", "eval.k", "eval.ais.steps", "eval.bdmc.images", "data.batch_size"} <= counts
    missing = [
        key for key in sorted(counts) if not any(fnmatch(key, pattern) for pattern in COUNT_LIMITS)
    ]
    assert missing == []


def test_threads_beyond_the_machine_warn_and_beyond_the_limit_are_refused(caplog):
    """Where the run runs: a checkpoint's stored count reaches mode=eval without the
    pre-check, and a smaller machine than the one that trained only warns."""
    from iwae.launch.device import check_threads_fit

    check_threads_fit(2, cores=2)
    assert "more than" not in caplog.text
    check_threads_fit(3, cores=2)
    assert "threads=3 is more than the 2 logical CPUs of this machine" in caplog.text
    with pytest.raises(UserError, match="threads=10000 is above its limit of 1,024"):
        check_threads_fit(10000, cores=2)
