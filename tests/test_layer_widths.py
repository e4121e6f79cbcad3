"""The memory checks see a network's convolutional feature maps, not only its linear layers
(`iwae.layer_widths`), without touching the run's random stream."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from iwae import ais
from iwae.conv import ConvModel
from iwae.errors import UserError
from iwae.evaluation import LIVE_TENSORS, widest_layer
from iwae.launch.memory_check import check_eval_memory, training_step_bytes
from iwae.layer_widths import measured_widths
from iwae.model import IWAEModel

# 256 channels at 14 x 14 after the decoder's first transposed convolution: 50,176 values a
# draw, while no linear layer is wider than 784 (the one between latent and maps is 8 x 49)
WIDE = (256, 8)
WIDEST_MAP = 256 * 14 * 14


def test_a_wide_feature_map_sets_the_widest_layer_and_the_step_estimate() -> None:
    model = ConvModel(784, channels=WIDE)
    linear_only = max(
        max(m.in_features, m.out_features) for m in model.modules() if hasattr(m, "in_features")
    )
    assert linear_only <= 784 < WIDEST_MAP
    assert WIDEST_MAP in measured_widths(model)
    assert widest_layer(model) == WIDEST_MAP
    k, batch = 50, 20
    assert training_step_bytes(model, k, batch) >= LIVE_TENSORS * WIDEST_MAP * 4 * k * batch
    assert ais.row_bytes(model) > ais.GRAPH_COPIES * WIDEST_MAP * 4


def test_the_meta_device_gives_the_same_widths_without_computing() -> None:
    torch.manual_seed(0)
    real = ConvModel(784, channels=WIDE)
    with torch.device("meta"):
        meta = ConvModel(784, channels=WIDE)
    assert measured_widths(meta) == measured_widths(real)
    assert widest_layer(meta) == widest_layer(real)


def test_the_measurement_leaves_the_random_stream_as_it_was() -> None:
    model = ConvModel(784, channels=WIDE)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    assert measured_widths(model)
    assert torch.equal(torch.rand(5), expected)


class NormalisedModel(torch.nn.Module):
    """A model with batch norm, whose statistics move in every training-mode forward pass."""

    input_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.linear = torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 600)

    def log_weights(self, x, k, generator=None, detach_q=False):
        draws = x.expand(k, *x.shape).reshape(-1, x.shape[-1])
        return self.linear(self.norm(draws)).sum(-1).view(k, -1)


def test_the_measurement_changes_nothing_in_the_model() -> None:
    model = NormalisedModel()
    model.norm.running_mean.fill_(0.5)
    assert model.training and 600 in measured_widths(model)
    assert model.training  # the mode is restored
    assert torch.equal(model.norm.running_mean, torch.full((4,), 0.5))
    assert int(model.norm.num_batches_tracked) == 0


def test_the_projects_mlps_are_sized_by_their_linear_layers_as_before() -> None:
    model = IWAEModel(784, [100, 50], [[200, 200], [100, 100]])
    linear = sum(m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert widest_layer(model) == 784
    assert training_step_bytes(model, 50, 20) - _parameters(model) == 50 * 20 * 4 * (
        LIVE_TENSORS * 784 + 2 * linear
    )
    assert ais.row_bytes(model) == ais.GRAPH_COPIES * (784 + linear) * 4


def test_a_model_that_cannot_be_run_so_falls_back_to_its_linear_layers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 900))  # no input_dim, no log_weights
    assert measured_widths(model) == ()
    assert widest_layer(model) == 900


def test_the_final_evaluation_of_a_wide_network_is_refused_when_it_cannot_fit(
    monkeypatch,
) -> None:
    """What the widths are for: a chunk that fits by the linear rule but not by the maps is
    refused in one line before anything runs."""
    from iwae.launch import memory_check

    model = ConvModel(784, channels=WIDE)
    eval_cfg = OmegaConf.create({"k": 5000, "chunk_size": 500, "max_bytes": None})
    by_linear = 500 * 500 * LIVE_TENSORS * 784 * 4  # 500 images, 500 samples a chunk
    free = 2 * by_linear  # room for the linear rule's chunk, not for the maps'
    monkeypatch.setattr(memory_check, "available_memory", lambda *a: (free, "CPU"))
    with pytest.raises(UserError, match="memory"):
        check_eval_memory(model, eval_cfg, 500, ("cpu", "auto"))


def _parameters(model: torch.nn.Module) -> int:
    return 4 * sum(p.numel() for p in model.parameters()) * 4
