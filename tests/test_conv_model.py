"""``model=conv`` (`iwae.conv.ConvModel`): its densities against ``torch.distributions``, its
log weights against its own AIS densities, and runs of it through every tool: training with
several objectives and estimators, an exact resume after a kill, and ``mode=eval`` with AIS
and BDMC on its checkpoint."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from iwae.ais import AISSettings, ais_log_likelihood, bdmc_bounds
from iwae.conv import ConvModel
from iwae.errors import UserError
from iwae.evaluation import log_likelihood
from iwae.launch.run import train
from tests.helpers import (
    TINY,
    TINY_CKPT,
    assert_same_weights,
    compose_config,
    final_weights,
    no_wandb_env,
    read_metrics,
    run_train,
    signal_at,
)

CONV = ["model=conv", "threads=1"]


@pytest.fixture(scope="module")
def model() -> ConvModel:
    torch.manual_seed(0)
    m = ConvModel(784, latent_dims=[3], channels=[2, 4]).double()
    with torch.no_grad():  # weights larger than the default init: q is far from the posterior
        for p in m.parameters():
            p.mul_(3.0)
    return m


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g, dtype=torch.float64) > 0.7).double()


def test_log_weights_are_the_densities_of_torch_distributions(model):
    x = images(4)
    k = 6
    log_w = model.log_weights(x, k, generator=torch.Generator().manual_seed(1))
    # the same noise, then every density from torch.distributions, constants included
    mean, log_std = model.encoder[0](x)
    g = torch.Generator().manual_seed(1)
    eps = torch.randn((k, *mean.shape), generator=g, dtype=torch.float64)
    h = mean + log_std.exp() * eps
    q = Independent(Normal(mean, log_std.exp()), 1)
    prior = Independent(Normal(torch.zeros(3).double(), torch.ones(3).double()), 1)
    logits = model.decoder[0](h)
    assert logits.shape == (k, 4, 784)
    likelihood = Independent(Bernoulli(logits=logits), 1)
    expected = prior.log_prob(h) + likelihood.log_prob(x) - q.log_prob(h)
    assert log_w.shape == (k, 4)
    torch.testing.assert_close(log_w, expected, rtol=1e-11, atol=1e-9)
    # detach_q changes the gradient, never the value
    held = model.log_weights(x, k, generator=torch.Generator().manual_seed(1), detach_q=True)
    torch.testing.assert_close(held, log_w, rtol=1e-11, atol=1e-9)


def test_log_weights_are_log_joint_minus_log_q_at_the_same_draws(model):
    """What AIS anneals (`log_joint`, `log_q`, `sample_q`) is what training and the k-sample
    estimate use: one generator state gives the same latents and the same weights, and AIS
    with one step is the importance-sampling estimate."""
    x, k = images(3, seed=2), 7
    z = model.sample_q(x, k, torch.Generator().manual_seed(5))
    log_w = model.log_weights(x, k, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        log_w, model.log_joint(x, z) - model.log_q(x, z), rtol=1e-11, atol=1e-9
    )
    torch.testing.assert_close(model.split_latents(z)[0], z)
    one_step = ais_log_likelihood(
        model, x, AISSettings(steps=1, chains=k), torch.Generator().manual_seed(5)
    )
    iwae = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(one_step, iwae, rtol=1e-11, atol=1e-9)


def test_the_k_sample_bound_is_stable_and_grows_with_k(model):
    """L_k at k = 5000 streamed in float64 chunks is finite and the same whatever the chunk;
    on average over images L_1 <= L_50 <= L_5000 (the bound tightens with k)."""
    x = images(5, seed=3)
    bounds = []
    for k in (1, 50, 5000):
        ll = log_likelihood(
            model, x, k, chunk_size=1000, generator=torch.Generator().manual_seed(0)
        )
        assert ll.dtype == torch.float64 and ll.isfinite().all()
        bounds.append(ll.mean().item())
    assert bounds[0] < bounds[1] < bounds[2], bounds
    again = log_likelihood(model, x, 5000, chunk_size=5000, generator=torch.Generator())
    assert abs(again.mean().item() - bounds[2]) < 0.05 * abs(bounds[2])


def test_samples_encoder_means_and_prior_draws_have_the_tools_shapes(model):
    g = torch.Generator().manual_seed(0)
    samples = model.sample(5, g)
    assert samples.shape == (5, 784) and ((samples >= 0) & (samples <= 1)).all()
    z, x = model.sample_joint(4, g)
    assert z.shape == (4, 3) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert model.sample_prior((2, 4), g).shape == (2, 4, 3)
    [means] = model.encoder_means(images(6), generator=g)
    torch.testing.assert_close(means, model.encoder[0](images(6))[0])
    low, up = bdmc_bounds(model, 2, AISSettings(steps=3, chains=2), g)
    assert low.shape == up.shape == (2,) and low.isfinite().all() and up.isfinite().all()
    # the two parameter sets split the whole model
    names = {id(p) for p in model.generative_parameters()} | {
        id(p) for p in model.inference_parameters()
    }
    assert names == {id(p) for p in model.parameters()}


def test_output_bias_is_the_logit_of_the_mean_pixel():
    m = ConvModel(784)
    pixel_mean = torch.linspace(0, 1, 784)
    m.init_output_bias(pixel_mean)
    p = pixel_mean.clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(m.decoder[0].bias.data, torch.log(p / (1 - p)))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"input_dim": 1024}, "model=conv is for 28x28 images (784 pixels), but the data has 1024"),
        ({"input_dim": 784, "latent_dims": [50, 20]}, "model.latent_dims must be one positive"),
        ({"input_dim": 784, "channels": [8]}, "model.channels must be two positive integers"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs, words):
    with pytest.raises(UserError) as err:
        ConvModel(**kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_other_image_sizes_are_refused_before_training(tmp_path):
    """16 x 16 images: one line from the model's constructor, from the memory check, before
    the model is built for training."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", images=rng.random((60, 16, 16)).astype(np.float32))
    data = ["data=npz", f"data.path={tmp_path / 'small.npz'}", "data.split=[40,10,10]"]
    cfg = compose_config([*TINY_CKPT, *CONV, *data], tmp_path)
    with pytest.raises(
        UserError,
        match=r"^model=conv is for 28x28 images \(784 pixels\), but "
        r"the data has 256 pixels an image; use model=one_layer",
    ):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "objective", [["objective=iwae"], ["objective=vae", "k=1"], ["objective.estimator=dreg"]]
)
def test_it_trains_with_objectives_and_estimators(tmp_path, objective):
    cfg = compose_config([*TINY, "logger=none", "eval.k=10", *CONV, *objective], tmp_path)
    metrics = train(cfg, tmp_path)
    assert metrics["train/steps"] == 10
    assert -300 < metrics["val/bound"] < 0
    # the k-sample estimate at eval.k=10 is a lower bound at least as tight as val/bound's
    # k=5 one, on other images: only its order of magnitude is checked
    assert 0 < metrics["test/nll"] < 300
    assert len(metrics["test/unit_variances"][0]) == 50
    assert (tmp_path / "samples.png").is_file()


def test_a_killed_conv_run_resumes_bit_identically_and_evaluates_with_ais_and_bdmc(tmp_path):
    """Killed mid-run and resumed: the same weights and metrics as an uninterrupted run; then
    ``mode=eval`` of its checkpoint with AIS and BDMC reproduces its test NLL."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    reference.mkdir()
    train(compose_config([*TINY_CKPT, *CONV], reference), reference)  # uninterrupted
    killed = run_train(
        [*TINY_CKPT, *CONV, *signal_at(13, "on_before_optimizer_step")],
        run_dir=run,
        env=no_wandb_env(),
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    run_train([*TINY_CKPT, *CONV, "resume=true"], run_dir=run, env=no_wandb_env())
    assert_same_weights(final_weights(run), final_weights(reference))
    resumed, expected = read_metrics(run), read_metrics(reference)
    assert resumed.pop("model") == "conv"  # Hydra's group choice: "custom" in-process
    expected.pop("model")
    resumed.pop("code/commit"), expected.pop("code/commit")  # others commit meanwhile
    assert resumed == expected

    evaluated = tmp_path / "evaluated"
    ais = ["eval.ais.steps=5", "eval.ais.chains=2", "eval.ais.images=4"]
    bdmc = ["eval.bdmc.images=2", "eval.bdmc.steps=5"]
    ckpt = run / "checkpoints" / "last.ckpt"
    run_train(
        ["mode=eval", f"ckpt_path={ckpt}", "eval.k=10", *ais, *bdmc, "logger=none"],
        run_dir=evaluated,
        env=no_wandb_env(),
    )
    metrics = json.loads((evaluated / "metrics.json").read_text())
    # the same estimate as the training run's own evaluation, to the last digit
    assert metrics["test/nll"] == resumed["test/nll"]
    assert metrics["model"] == "conv"
    assert metrics["test/ais_images"] == 4 and math.isfinite(metrics["test/nll_ais"])
    assert metrics["bdmc/images"] == 2 and metrics["bdmc/lower"] < metrics["bdmc/upper"]


def test_it_has_every_method_every_tool_asks_for(model):
    """Built on the model contract alone, as a plug-in would be: no tool is missing a method."""
    from iwae import contract

    assert {tool: contract.missing(model, tool) for tool in contract.TOOLS} == dict.fromkeys(
        contract.TOOLS
    )
