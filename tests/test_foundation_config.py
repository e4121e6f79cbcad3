"""Config groups compose and instantiate; the schedule is the paper's."""

from __future__ import annotations

import importlib.util

import pytest
from hydra.utils import instantiate

from iwae.errors import UserError
from iwae.launch.assembly import build
from iwae.launch.cli import check_overrides, group_options
from iwae.schedules import ConstantSchedule, PaperSchedule
from tests.helpers import CONF_DIR, compose_config

# Groups whose options are plain objects this test can build without side effects.
BUILDABLE = ("data", "model", "objective", "optimizer", "schedule", "logger", "callbacks")


def all_options(groups=BUILDABLE):
    return [(g, o) for g in groups for o in group_options(CONF_DIR, g)]


@pytest.mark.parametrize("group,option", all_options())
def test_every_group_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], tmp_path)
    node = cfg[group]
    if group == "data" and "path" in node and node.path is None:
        # the user's own data: building it without a path is a one-line error naming the key
        with pytest.raises(UserError, match="data.path="):
            build(node)
        return
    if group == "model":
        obj = instantiate(node, input_dim=784)
        assert sum(p.numel() for p in obj.parameters()) > 0
    elif group in ("logger", "callbacks"):
        for n in (node or {}).values():
            if option == "mlflow" and importlib.util.find_spec("mlflow") is None:
                with pytest.raises(UserError, match=r"pip install '\.\[mlflow\]'"):
                    build(n)  # an optional extra: one line naming it, before any training
            else:
                instantiate(n)
    elif group == "optimizer":
        import torch

        opt = instantiate(node)([torch.nn.Parameter(torch.zeros(1))])
        assert isinstance(opt, torch.optim.Optimizer)
    else:
        instantiate(node)


@pytest.mark.parametrize("option", group_options(CONF_DIR, "experiment"))
def test_every_experiment_composes(option, tmp_path):
    cfg = compose_config([f"experiment={option}"], tmp_path)
    assert cfg.k >= 1 and cfg.objective._target_.startswith("iwae.")


@pytest.mark.parametrize("option", group_options(CONF_DIR, "trainer"))
def test_every_trainer_composes(option, tmp_path):
    cfg = compose_config([f"trainer={option}"], tmp_path)
    assert cfg.trainer._target_.endswith("Trainer")


def test_paper_defaults(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.optimizer.lr == 1e-3 and list(cfg.optimizer.betas) == [0.9, 0.999]
    assert cfg.optimizer.eps == 1e-4 and cfg.data.batch_size == 20
    assert cfg.eval.k == 5000 and cfg.eval.active_threshold == 0.01
    cfg = compose_config(["objective=iwae", "k=5000"], tmp_path)
    assert instantiate(cfg.objective).k == 5000


def test_paper_schedule():
    s = PaperSchedule()
    assert s.stage_epochs == [1, 3, 9, 27, 81, 243, 729, 2187] and s.epochs == 3280
    assert s.lr_factor(0) == 1.0
    assert s.lr_factor(1) == pytest.approx(10 ** (-1 / 7))
    assert s.lr_factor(3) == pytest.approx(10 ** (-1 / 7))
    assert s.lr_factor(4) == pytest.approx(10 ** (-2 / 7))
    assert s.lr_factor(3279) == pytest.approx(10 ** (-7 / 7))
    assert PaperSchedule(stages=3).epochs == 13
    assert ConstantSchedule(7).epochs == 7 and ConstantSchedule(7).lr_factor(5) == 1.0


def test_unknown_group_option_names_the_choices():
    message = check_overrides(["objective=iwea"])
    assert message is not None and "'iwea'" in message and "iwae" in message and "vae" in message
    assert check_overrides(["-m", "objective=vae,iwae", "k=1,5"]) is None
    assert "'bogus'" in check_overrides(["objective=vae,bogus"])
