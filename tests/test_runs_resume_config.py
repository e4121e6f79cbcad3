"""A resume that would change the run (k, objective, seed, data, optimizer, schedule...) is
refused with one line naming the changed keys; what only observes the run may change, and a
schedule may be extended."""

from __future__ import annotations

import pytest

from iwae.errors import UserError
from iwae.launch.run import train
from iwae.training.resume import check_resume_config, refused_changes
from tests.helpers import (
    TINY_CKPT,
    assert_same_weights,
    comparable_metrics,
    compose_config,
    file_digest,
    final_weights,
    no_wandb_env,
    run_train,
)

ONE_EPOCH = [*TINY_CKPT, "schedule.epochs=1", "eval.enabled=false"]


def config(overrides: list[str], tmp_path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config([*TINY_CKPT, *overrides], tmp_path), resolve=True)


@pytest.mark.parametrize(
    "change, key",
    [
        ("k=50", "k"),
        ("seed=1", "seed"),
        ("objective=vae", "objective._target_"),
        ("objective.estimator=dreg", "objective.estimator"),
        ("data.split=[150,100,50]", "data.split"),
        ("data.binarization=fixed", "data.binarization"),
        ("model=two_layer", "model.hidden_dims"),
        ("optimizer.lr=0.01", "optimizer.lr"),
        ("schedule.epochs=4", None),  # extending the schedule is allowed...
        ("schedule.epochs=2", "schedule.epochs"),  # ...shortening it is not
        ("trainer.devices=2", "trainer.devices"),
        ("~callbacks.rng_state", "callbacks.rng_state._target_"),
    ],
)
def test_a_change_to_what_defines_the_run_is_refused(tmp_path, change, key):
    stored = config([], tmp_path)
    changes = refused_changes(stored, config([change], tmp_path))
    if key is None:
        assert changes == []
    else:
        assert any(c.startswith(f"{key}: ") for c in changes), changes


def test_what_only_observes_the_run_may_change(tmp_path):
    stored = config([], tmp_path)
    new = config(
        [
            "eval.k=100",
            "eval.val_k=7",
            "threads=1",
            "logger=csv",
            "trainer.enable_progress_bar=true",
            "++trainer.max_steps=100",
            "callbacks.periodic.every_n_train_steps=2",
            "callbacks.nonfinite.action=skip",
            "resume=true",
        ],
        tmp_path / "elsewhere",  # paths.output_dir (and everything under it) differs too
    )
    assert refused_changes(stored, new) == []
    check_resume_config(stored, new, "last.ckpt")  # no error
    check_resume_config(None, new, "old.ckpt")  # an old checkpoint without a config: allowed


def test_resume_with_another_k_stops_before_training_in_one_line(tmp_path):
    first = run_train(ONE_EPOCH, run_dir=tmp_path, env=no_wandb_env(), check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    (tmp_path / "metrics.json").unlink()
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = file_digest(last)
    changed = run_train(
        [*ONE_EPOCH, "resume=true", "k=50", "optimizer.lr=0.01"],
        run_dir=tmp_path,
        env=no_wandb_env(),
        check=False,
    )
    assert changed.returncode == 2
    lines = changed.stderr.strip().splitlines()
    assert lines[-1].startswith("error: resuming ") and "Traceback" not in changed.stderr
    assert "k: 5 there, 50 here" in lines[-1] and "optimizer.lr: " in lines[-1]
    assert file_digest(last) == before and not (tmp_path / "metrics.json").exists()


def test_an_extended_schedule_continues_as_one_longer_run(tmp_path):
    """Trained for 1 epoch, resumed with schedule.epochs=2: the same as 2 epochs at once."""
    run_dir, reference_dir = tmp_path / "run", tmp_path / "reference"
    train(compose_config(ONE_EPOCH, run_dir), run_dir)
    longer = [*ONE_EPOCH, "schedule.epochs=2"]
    resumed = train(compose_config([*longer, "resume=true"], run_dir), run_dir)
    expected = train(compose_config(longer, reference_dir), reference_dir)
    assert resumed["train/steps"] == 20
    assert comparable_metrics(resumed) == comparable_metrics(expected)
    assert_same_weights(final_weights(run_dir), final_weights(reference_dir))


def test_check_resume_config_names_the_checkpoint(tmp_path):
    with pytest.raises(UserError, match="resuming x.ckpt would change the run: k: 5 there, 6"):
        check_resume_config(config([], tmp_path), config(["k=6"], tmp_path), "x.ckpt")
