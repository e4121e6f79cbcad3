"""Model and data on one device from end to end, checked on a CPU-only machine.

On a GPU, Lightning's ``Strategy.teardown()`` moves the module to the CPU after ``fit`` while
the datamodule's test tensors stay on ``cuda:0``. Here the test images are put on the
``meta`` device (shapes only) to stand for "another device than the model's"; a spy on
``log_weights`` records where the model and the data were when the evaluation reached it.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from iwae import evaluation
from iwae.model import IWAEModel


class Reached(Exception):
    """The evaluation got as far as the model; the spy has what it needs."""


def test_evaluation_runs_the_model_where_the_data_is(monkeypatch):
    model = IWAEModel(input_dim=6, latent_dims=[2], hidden_dims=[[4]])  # on the CPU
    batches = [torch.zeros(3, 6, device="meta")]  # "the GPU", as after Lightning's teardown
    seen = []

    def spy(self, x, k, **kwargs):
        seen.append((next(self.parameters()).device.type, x.device.type))
        raise Reached

    monkeypatch.setattr(IWAEModel, "log_weights", spy)
    cpu_generator = torch.Generator  # the meta device has no generator: seeds stay on the CPU
    monkeypatch.setattr(torch, "Generator", lambda device=None: cpu_generator())
    cfg = OmegaConf.create({"k": 5, "chunk_size": 5, "seed": 0, "active_threshold": 0.01})
    with pytest.raises(Reached):
        evaluation.test_metrics(model, batches, cfg)
    assert seen == [("meta", "meta")]


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_where_there_is_none_is_one_line_before_training(monkeypatch, accelerator):
    from iwae.errors import UserError
    from iwae.launch.config_check import check_top_level

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"k": 5, "seed": 0, "trainer": {"accelerator": accelerator}})
    with pytest.raises(UserError, match=f"trainer.accelerator={accelerator} asks for a GPU"):
        check_top_level(cfg)
    check_top_level(OmegaConf.merge(cfg, {"trainer": {"accelerator": "auto"}}))  # allowed
