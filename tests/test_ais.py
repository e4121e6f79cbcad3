"""AIS and BDMC (`iwae.ais`) against exact answers: the 1-D latent model whose log p(x) is
known by quadrature (tests/test_foundation_bounds.py), and the IWAE bound they reduce to."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from iwae import ais
from iwae.ais import AISSettings, ais_log_likelihood, bdmc_bounds, evaluate_ais
from iwae.bounds import iwae_bound
from iwae.errors import UserError
from iwae.launch.config_check import check_eval_values
from iwae.launch.value_checks import check_choices
from iwae.model import IWAEModel
from tests.helpers import binary_images
from tests.test_foundation_bounds import ALL_X, exact_log_px, tiny_model


def exact_model() -> IWAEModel:
    """`tiny_model` with q's weights scaled down: q is wrong (the k = 1 bound is ~0.1-0.3
    nats below log p(x)) but not absurdly wide, so a modest AIS budget can close the gap."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.mul_(0.3)
    return model


def two_layer_model() -> IWAEModel:
    torch.manual_seed(0)
    return IWAEModel(6, latent_dims=[3, 2], hidden_dims=[[4], [4]]).double()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("make, x", [(exact_model, ALL_X), (two_layer_model, binary_images(5))])
def test_one_step_is_importance_sampling_from_q_under_the_same_noise(make, x):
    """steps=1: no transition, the weight is log p(x, h) - log q(h | x) at h ~ q, so C chains
    give the IWAE bound with k = C from the same draws of the same generator."""
    model = make()
    for chains in (1, 7):
        expected = iwae_bound(model.log_weights(x, chains, generator=gen(3))).detach()
        got = ais_log_likelihood(model, x, AISSettings(steps=1, chains=chains), gen(3))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@torch.no_grad()
def test_ais_converges_to_the_quadrature_log_likelihood():
    model = exact_model()
    exact = exact_log_px(model, ALL_X).detach()
    reps = 16  # independent estimates of each of the 8 images
    x = ALL_X.repeat(reps, 1)
    gaps = []
    for steps in (1, 20, 300):
        settings = AISSettings(steps=steps, chains=8, leapfrog=5)
        est = ais_log_likelihood(model, x, settings, gen(steps)).view(reps, 8)
        gaps.append((exact - est.mean(0)).abs())
    assert gaps[0].mean() > gaps[1].mean() > gaps[2].mean()
    assert gaps[0].mean() > 0.05  # the IS bound is visibly loose: the test can tell
    assert gaps[2].mean() < 0.05 and gaps[2].max() < 0.1, gaps[2]  # at 300 steps


@torch.no_grad()
@pytest.mark.parametrize("init", ["q", "prior"])
def test_ais_weights_are_unbiased_estimates_of_p_x(init):
    """E[exp(log w)] = p(x) however few steps (the step size adapting meanwhile): the mean
    of exp(log w - log p(x)) over many one-chain runs is 1 within its standard error."""
    model = tiny_model(1)
    x = ALL_X.repeat(200, 1)
    exact = exact_log_px(model, ALL_X).detach().repeat(200)
    settings = AISSettings(steps=8, chains=1, leapfrog=3, step_size=0.3, init=init)
    ratio = (ais_log_likelihood(model, x, settings, gen(0)) - exact).exp()
    se = ratio.std() / math.sqrt(len(ratio))
    assert abs(ratio.mean() - 1) < 4 * se + 0.02, (ratio.mean(), se)
    assert (ratio.log().mean() < 0).item()  # while the log is, as Jensen says, biased low


@torch.no_grad()
def test_step_size_adapts_toward_the_target_acceptance():
    """A higher target acceptance ends with smaller steps, image by image."""
    model = tiny_model()
    final = []
    for target in (0.95, 0.3):
        settings = AISSettings(steps=100, chains=2, leapfrog=2, step_size=0.2, target_accept=target)
        _, used = ais._forward(model, ALL_X, settings, gen(0))
        assert used.shape == (99, 8) and torch.equal(
            used[0], torch.full((8,), 0.2, dtype=torch.float64)
        )
        final.append(used[-1])
    assert (final[0] < final[1]).all(), final


@torch.no_grad()
def test_two_layer_ais_anneals_both_layers_and_tightens_the_bound():
    model = two_layer_model()
    x = binary_images(40)
    is_k1 = ais_log_likelihood(model, x, AISSettings(steps=1, chains=1), gen(0))
    annealed = ais_log_likelihood(model, x, AISSettings(steps=100, chains=1, leapfrog=3), gen(0))
    assert annealed.mean() > is_k1.mean() + 3 * (annealed - is_k1).std() / math.sqrt(40)


@torch.no_grad()
def test_bdmc_brackets_the_quadrature_value_and_its_gap_shrinks():
    model = exact_model()
    n = 64
    _, x = model.sample_joint(n, gen(5))  # the draws bdmc_bounds makes from the same seed
    exact = exact_log_px(model, x).detach().mean()
    gaps = []
    for steps in (3, 30, 300):
        lower, upper = bdmc_bounds(model, n, AISSettings(steps=steps, chains=1, leapfrog=5), gen(5))
        lo, up = lower.mean(), upper.mean()
        assert lo <= up
        assert lo - 0.02 <= exact <= up + 0.02, (steps, lo, exact, up)
        gaps.append(float(up - lo))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.1, gaps


@torch.no_grad()
def test_bdmc_reports_standard_errors_over_images_and_the_paired_gap():
    """Each bound's error is over the simulated images; the gap's comes from the per-image
    differences upper - lower (the two bounds of one image are not independent)."""
    from iwae.training.outputs import format_results

    model, n, seed = exact_model(), 64, 3
    settings = AISSettings(steps=5, chains=1, leapfrog=2)
    out = ais.evaluate_bdmc(model, n, settings, seed)
    lower, upper = bdmc_bounds(model, n, settings, gen(seed))  # the same draws, one pass
    root_n = math.sqrt(n)
    assert out["bdmc/lower_stderr"] == pytest.approx(lower.std().item() / root_n, rel=1e-12)
    assert out["bdmc/upper_stderr"] == pytest.approx(upper.std().item() / root_n, rel=1e-12)
    assert out["bdmc/gap_stderr"] == pytest.approx((upper - lower).std().item() / root_n)
    summary = format_results({**out, "eval/bdmc_steps": 5})
    gap = f"gap {out['bdmc/gap']:.2f} ± {out['bdmc/gap_stderr']:.2f}"
    assert f"{out['bdmc/lower']:.2f} ± {out['bdmc/lower_stderr']:.2f}" in summary and gap in summary


@torch.no_grad()
def test_fixed_seed_gives_the_same_estimate_and_streaming_bounds_memory():
    model = two_layer_model()
    batches = [binary_images(6, seed=1), binary_images(4, seed=2)]
    settings = AISSettings(steps=10, chains=3, leapfrog=2)
    a = evaluate_ais(model, batches, settings, seed=4)
    b = evaluate_ais(model, batches, settings, seed=4)
    assert torch.equal(a, b) and a.shape == (10,)
    assert not torch.equal(a, evaluate_ais(model, batches, settings, seed=5))
    one_image = (settings.chains + ais.TUNING_CHAINS) * ais.row_bytes(model)
    assert ais.images_per_pass(model, settings, 3 * one_image) == 3
    first = evaluate_ais(model, batches, settings, 4, max_bytes=3 * one_image, images=7)
    assert first.shape == (7,)
    with pytest.raises(UserError, match="too small for the 3 AIS chains of one image"):
        ais.images_per_pass(model, settings, one_image - 1)


BAD = {
    "steps=-1": ({"steps": -1}, "eval.ais.steps must be an integer >= 0"),
    "chains=0": ({"chains": 0}, "eval.ais.chains must be an integer >= 1"),
    "leapfrog=0": ({"leapfrog": 0}, "eval.ais.leapfrog must be an integer >= 1"),
    "step_size=0": ({"step_size": 0}, "eval.ais.step_size must be a number > 0"),
    "step_size=-0.1": ({"step_size": -0.1}, "eval.ais.step_size must be a number > 0"),
    "target_accept=0": ({"target_accept": 0}, "eval.ais.target_accept must be a number in (0, 1)"),
    "target_accept=1": ({"target_accept": 1}, "eval.ais.target_accept must be a number in (0, 1)"),
    "init=posterior": ({"init": "posterior"}, "eval.ais.init must be one of q, prior"),
    "images=0": ({"images": 0}, "eval.ais.images must be an integer >= 1 or null"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_ais_values_get_one_line(case):
    change, expected = BAD[case]
    ais_node = {"steps": 10, "chains": 4, "leapfrog": 2, "step_size": 0.1, "target_accept": 0.6}
    node = OmegaConf.create(
        {"k": 5, "chunk_size": 5, "enabled": True, "ais": {**ais_node, **change}}
    )
    with pytest.raises(UserError) as err:  # the counts and numbers, then the named choices
        check_eval_values(node, mode="eval")
        check_choices(OmegaConf.create({"eval": node}))
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_bad_bdmc_and_per_image_values_get_one_line():
    node = OmegaConf.create({"k": 5, "chunk_size": 5, "bdmc": {"images": 4, "steps": 0}})
    with pytest.raises(UserError, match="eval.bdmc.steps must be an integer >= 1"):
        check_eval_values(node, mode="eval")
    node = OmegaConf.create({"k": 5, "chunk_size": 5, "per_image": True})
    with pytest.raises(UserError, match="eval.per_image is for mode=eval"):
        check_eval_values(node, mode="train")
    check_eval_values(node, mode="eval")  # and accepted where it applies


def test_the_documented_ais_speed_is_the_committed_measurement():
    """docs/evaluation.md's AIS speed table is benchmarks/results/ais_cpu.json, row for row."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    measured = json.loads((root / "benchmarks" / "results" / "ais_cpu.json").read_text())
    page = (root / "docs" / "evaluation.md").read_text().split("**AIS speed**")[1]
    page = page.split("\n## ")[0]  # up to the next section
    documented = [line for line in page.splitlines() if line.startswith("| ") and "---" not in line]
    expected = [
        f"| {row['images']} | {row['images_per_s']:.2f} | {row['seconds']:.3g} |"
        for row in measured["rows"]
    ]
    assert documented[1:] == expected
    assert len({row["images"] for row in measured["rows"]}) > 1  # how speed depends on it
    load = measured["machine"]["load_average_1m"]
    assert f"load average {load:.1f}" in page and "one thread" in page
