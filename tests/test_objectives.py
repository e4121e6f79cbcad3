"""MIWAE, CIWAE, PIWAE and staged objectives: their special cases are the paper's bounds."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from iwae.bounds import effective_sample_size, iwae_bound, miwae_bound
from iwae.errors import UserError
from iwae.objectives import (
    CIWAE,
    IWAE,
    MIWAE,
    PIWAE,
    VAE,
    Staged,
)
from tests.helpers import ESTIMATORS, binary_images, compose_config, grads, small_model


def assert_same(a, b) -> None:
    for t, u in zip(a, b, strict=True):
        torch.testing.assert_close(t, u, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_miwae_special_cases_are_iwae_and_vae(estimator):
    model, x = small_model(4), binary_images(4)
    assert_same(
        grads(MIWAE(5, m=1, estimator=estimator), model, x, 1),
        grads(IWAE(5, estimator=estimator), model, x, 1),
    )
    assert_same(
        grads(MIWAE(1, m=6, estimator=estimator), model, x, 2),
        grads(VAE(6, estimator=estimator), model, x, 2),
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_ciwae_ends_are_vae_and_iwae(estimator):
    model, x = small_model(5), binary_images(4)
    assert_same(
        grads(CIWAE(5, beta=1.0, estimator=estimator), model, x, 3),
        grads(VAE(5, estimator=estimator), model, x, 3),
    )
    assert_same(
        grads(CIWAE(5, beta=0.0, estimator=estimator), model, x, 4),
        grads(IWAE(5, estimator=estimator), model, x, 4),
    )


def test_ciwae_bound_lies_between_its_ends():
    model, x = small_model(5), binary_images(4)
    torch.manual_seed(0)
    log_w = model.log_weights(x, 7).detach()
    vae, iwae, mix = VAE(7).bound(log_w), IWAE(7).bound(log_w), CIWAE(7, beta=0.25).bound(log_w)
    torch.testing.assert_close(mix, 0.25 * vae + 0.75 * iwae)
    assert (vae <= mix + 1e-12).all() and (mix <= iwae + 1e-12).all()


def test_piwae_trains_each_network_on_its_own_bound():
    model, x = small_model(6), binary_images(4)
    bound, generative, inference = grads(PIWAE(3, m=4), model, x, 5)
    iwae_bound_, iwae_generative, _ = grads(IWAE(12), model, x, 5)
    _, _, miwae_inference = grads(MIWAE(3, m=4), model, x, 5)
    torch.testing.assert_close(bound, iwae_bound_)
    torch.testing.assert_close(generative, iwae_generative)
    torch.testing.assert_close(inference, miwae_inference)


def test_miwae_bound_groups_consecutive_rows():
    log_w = torch.randn(6, 3, dtype=torch.float64)
    expected = (iwae_bound(log_w[:3]) + iwae_bound(log_w[3:])) / 2
    torch.testing.assert_close(miwae_bound(log_w, 2), expected)


def test_effective_sample_size_limits():
    assert torch.allclose(effective_sample_size(torch.zeros(8, 2)), torch.tensor(8.0))
    one_heavy = torch.tensor([[0.0], [-100.0], [-100.0]])
    assert torch.allclose(effective_sample_size(one_heavy), torch.tensor(1.0))


def test_staged_objective_switches_at_the_configured_epoch():
    staged = Staged(VAE(1), IWAE(50), switch_epoch=3)
    assert staged.name == "vae_to_iwae"
    seen = []
    for epoch in range(5):
        staged.on_train_epoch_start(epoch)
        seen.append((type(staged.current).__name__, staged.k))
    assert seen == [("VAE", 1)] * 3 + [("IWAE", 50)] * 2
    staged.on_train_epoch_start(1)  # a run resumed before the switch goes back to the first
    assert staged.k == 1 and staged.num_samples == 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MIWAE(5, m=0), "objective.m must be an integer >= 1, got 0"),
        (lambda: CIWAE(5, beta=1.5), r"objective.beta must be a number in \[0, 1\], got 1.5"),
        (lambda: PIWAE(5, m=2, estimator="score"), "objective.estimator must be one of"),
        (lambda: Staged(VAE(1), IWAE(5), switch_epoch=0), "objective.switch_epoch must be"),
        (lambda: Staged(VAE(1), "iwae", switch_epoch=2), "objective.second must be a single"),
        (lambda: IWAE(0), "^k must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_fail_at_construction(make, message):
    with pytest.raises(UserError, match=message):
        make()


@pytest.mark.parametrize(
    "option, expected",
    [
        ("miwae", "MIWAE(m=8, k=8, estimator='reparam')"),
        ("ciwae", "CIWAE(k=8, beta=0.05, estimator='reparam')"),
        ("piwae", "PIWAE(m=8, k=8, estimator='reparam')"),
        ("vae_to_iwae", "Staged(VAE(k=1, estimator='reparam') -> IWAE(k=8, "),
        ("iwae_to_vae", "Staged(IWAE(k=8, estimator='reparam') -> VAE(k=1, "),
    ],
)
def test_objective_configs_build_rainforths_and_burdas_settings(option, expected, tmp_path):
    cfg = compose_config([f"objective={option}", "k=8"], tmp_path)
    assert repr(instantiate(cfg.objective)).startswith(expected)


def test_estimator_is_a_config_setting(tmp_path):
    cfg = compose_config(["objective=iwae", "objective.estimator=dreg"], tmp_path)
    assert instantiate(cfg.objective).estimator == "dreg"


@pytest.mark.parametrize("experiment, extra", [("paper_table2", 2187), ("table2_small", 11)])
def test_table2_experiments_switch_where_the_schedule_ends(experiment, extra, tmp_path):
    """The paper: 3,280 epochs, then 2,187 more with the other objective at lr 1e-4."""
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    schedule, objective = instantiate(cfg.schedule), instantiate(cfg.objective)
    assert objective.switch_epoch == schedule.epochs
    assert cfg.trainer.max_epochs == schedule.epochs + extra
    assert schedule.lr_factor(schedule.epochs) * cfg.optimizer.lr == pytest.approx(1e-4)
    assert [s.name for s in objective.stages] == ["vae", "iwae"] and objective.stages[1].k == 50
