"""The model's densities, shapes and initialisation against independent references."""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Normal

from iwae.model import IWAEModel, bernoulli_log_prob, gaussian_log_prob, standard_normal_log_prob


def test_densities_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    z, mean, log_std = (torch.randn(4, 3, 7, generator=g, dtype=torch.float64) for _ in range(3))
    expected = Normal(mean, log_std.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mean, log_std), expected)
    torch.testing.assert_close(standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    x = torch.bernoulli(torch.full((3, 7), 0.4, dtype=torch.float64), generator=g)
    logits = torch.randn(4, 3, 7, generator=g, dtype=torch.float64) * 5
    torch.testing.assert_close(
        bernoulli_log_prob(x, logits),
        Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1),
    )


def reference_log_weights(model: IWAEModel, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """log p(x, h) - log q(h|x) built from torch.distributions, drawing noise in the same order."""
    g = torch.Generator().manual_seed(seed)
    h, log_q, samples = x, 0.0, []
    for layer in model.encoder:
        mean, log_std = layer(h)
        q = Normal(mean.expand(k, *mean.shape[-2:]), log_std.exp().expand(k, *mean.shape[-2:]))
        h = q.mean + q.stddev * torch.randn(q.mean.shape, generator=g, dtype=x.dtype)
        log_q = log_q + q.log_prob(h).sum(-1)
        samples.append(h)
    log_p = Normal(0.0, 1.0).log_prob(samples[-1]).sum(-1)
    for i in range(len(samples) - 1, 0, -1):
        mean, log_std = model.decoder[i](samples[i])
        log_p = log_p + Normal(mean, log_std.exp()).log_prob(samples[i - 1]).sum(-1)
    logits = model.decoder[0](samples[0])
    log_p = log_p + Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    return log_p - log_q


def test_log_weights_match_reference_two_layers():
    torch.manual_seed(0)
    model = IWAEModel(12, latent_dims=[5, 3], hidden_dims=[[8, 8], [4]]).double()
    x = torch.bernoulli(torch.full((6, 12), 0.3, dtype=torch.float64))
    got = model.log_weights(x, 7, generator=torch.Generator().manual_seed(3))
    assert got.shape == (7, 6)
    torch.testing.assert_close(got, reference_log_weights(model, x, 7, seed=3))
    # detach_q changes gradients only, never the value
    again = model.log_weights(x, 7, generator=torch.Generator().manual_seed(3), detach_q=True)
    torch.testing.assert_close(again, got)


def test_architecture_follows_config():
    model = IWAEModel(784, latent_dims=[100, 50], hidden_dims=[[200, 200], [100, 100]])
    shapes = [tuple(p.shape) for p in model.encoder.parameters() if p.ndim == 2]
    assert shapes == [(200, 784), (200, 200), (200, 200), (100, 100), (100, 100), (100, 100)]
    decoder_out = model.decoder[0].head.weight.shape
    assert decoder_out == (784, 200)
    assert model.decoder[1].head.weight.shape == (200, 100)  # 100 -> 100 -> (mean, log_std) of h1
    assert all(
        float(p.detach().abs().sum()) == 0
        for n, p in model.named_parameters()
        if n.endswith("bias")
    )


def test_output_bias_is_clipped_logit_of_mean_pixel():
    model = IWAEModel(4, latent_dims=[2], hidden_dims=[[3]])
    model.init_output_bias(torch.tensor([0.0, 0.5, 0.9, 1.0]))
    p = torch.tensor([1e-3, 0.5, 0.9, 1 - 1e-3])
    torch.testing.assert_close(model.decoder[0].head.bias, torch.log(p / (1 - p)))


def test_sample_and_encoder_means_shapes():
    model = IWAEModel(10, latent_dims=[4, 2], hidden_dims=[[6], [3]])
    assert model.sample(5).shape == (5, 10)
    means = model.encoder_means(torch.ones(3, 10), n_samples=4)
    assert [tuple(m.shape) for m in means] == [(3, 4), (3, 2)]
    assert math.isfinite(float(model.log_weights(torch.ones(3, 10), 2).sum()))
