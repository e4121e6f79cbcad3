"""The test-time estimators against exact answers: log p(x) by quadrature on a model with a
1-D latent, exact replays of one sample stream, measured peak memory, and active units."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from iwae.evaluation import (
    GroupedBound,
    active_units,
    bound_vs_k,
    chunk_plan,
    delta_variance,
    evaluate_nll,
    format_units,
    log_likelihood,
    widest_layer,
)
from iwae.model import IWAEModel, bernoulli_log_prob, standard_normal_log_prob

D = 4  # pixels: all 2^4 images enumerable, so sum_x p(x) = 1 checks the quadrature


@pytest.fixture(scope="module")
def tiny() -> IWAEModel:
    """x(4) <- 3 tanh <- h(1), float64; sharpened decoder so the posterior is far from q."""
    torch.manual_seed(0)
    model = IWAEModel(D, latent_dims=[1], hidden_dims=[[3]]).double().eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def all_images() -> torch.Tensor:
    """Every binary image of D pixels, ``[16, D]``."""
    bits = torch.arange(2**D)[:, None] >> torch.arange(D)
    return (bits & 1).double()


def exact_log_px(model: IWAEModel, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int N(h; 0, 1) p(x | h) dh by a Riemann sum on [-12, 12], ``[B]``."""
    h = torch.linspace(-12, 12, 48_001, dtype=torch.float64)[:, None]  # [G, 1]
    with torch.no_grad():
        logits = model.decoder[0](h)  # [G, D]
    log_joint = standard_normal_log_prob(h)[:, None] + bernoulli_log_prob(x, logits[:, None])
    return torch.logsumexp(log_joint, 0) + math.log(h[1, 0] - h[0, 0])


def test_quadrature_is_a_distribution(tiny, all_images):
    assert torch.logsumexp(exact_log_px(tiny, all_images), 0).item() == pytest.approx(0, abs=1e-9)


def test_estimate_converges_to_exact_log_px(tiny, all_images):
    exact = exact_log_px(tiny, all_images)
    gaps = []
    for k in (1, 10, 100, 20_000):
        g = torch.Generator().manual_seed(1)
        estimate = log_likelihood(tiny, all_images, k, chunk_size=5000, generator=g)
        gaps.append((exact - estimate).mean().item())
    assert gaps[0] > 0.1  # q is a poor proposal: the ELBO is visibly loose
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] - 1e-3  # L_k grows with k towards log p(x)
    assert abs(gaps[3]) < 5e-3


class ReplayModel(nn.Module):
    """Hands out one fixed stream of log weights ``[K, B]`` in order, whatever the chunking."""

    def __init__(self, stream: torch.Tensor) -> None:
        super().__init__()
        self.stream, self.pos = stream, 0
        self.dummy = nn.Linear(1, 1)  # gives chunk_plan a dtype

    def log_weights(self, x, k, generator=None, detach_q=False):
        out = self.stream[self.pos : self.pos + k, : x.shape[0]]
        self.pos += k
        return out


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
def test_chunked_equals_unchunked_on_one_stream(chunk_size):
    stream = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stream = 40 * stream - 90  # spread like real log weights: a naive exp would underflow
    expected = torch.logsumexp(stream, 0) - math.log(200)
    got = log_likelihood(ReplayModel(stream), torch.zeros(3, 1), 200, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 5, 7, 50])
def test_grouped_bound_matches_direct_groups(k):
    g = torch.Generator().manual_seed(2)
    stream = 10 * torch.randn(350, 2, generator=g, dtype=torch.float64)
    acc = GroupedBound(k, 2)
    for chunk in stream.split(13):  # 13 is prime: groups straddle chunk borders
        acc.add(chunk)
    groups = 350 // k
    direct = torch.logsumexp(stream[: groups * k].reshape(groups, k, 2), 1) - math.log(k)
    assert acc.groups == groups
    torch.testing.assert_close(acc.mean(), direct.mean(0), rtol=0, atol=1e-12)
    if groups > 1:
        torch.testing.assert_close(acc.mc_variance(), direct.var(0) / groups, rtol=1e-9, atol=0)


def test_estimate_does_not_depend_on_chunk_size(tiny, all_images):
    """Different chunk sizes draw different noise; the estimates agree within Monte Carlo error."""
    k, values = 1000, []
    for chunk_size, seed in ((3, 0), (37, 1), (1000, 2)):
        g = torch.Generator().manual_seed(seed)
        values.append(log_likelihood(tiny, all_images, k, chunk_size, g).mean().item())
    # Monte Carlo error of the mean over 16 images, from one stream's weights.
    g = torch.Generator().manual_seed(3)
    log_w = tiny.log_weights(all_images, k, generator=g)
    var = delta_variance(torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), k)
    stderr = var.sum().sqrt().item() / len(all_images)
    assert stderr > 0
    assert max(values) - min(values) < 6 * stderr
    assert len(set(values)) == 3  # the streams did differ


def test_bound_vs_k_is_monotone_and_ends_at_log_likelihood(tiny, all_images):
    curve = bound_vs_k(tiny, [all_images], ks=(1, 5, 50, 500), chunk_size=64, seed=4)
    bounds = [row["bound"] for row in curve]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1] - 0.1
    assert all(row["mc_stderr"] > 0 for row in curve)
    assert [row["groups"] for row in curve] == [500, 100, 10, 1]
    # the k = 500 point is the same stream as the NLL estimate with the same seed and chunks
    nll = evaluate_nll(tiny, [all_images], 500, chunk_size=64, seed=4)
    assert curve[-1]["bound"] == pytest.approx(-nll["nll"], abs=1e-12)
    exact = exact_log_px(tiny, all_images).mean().item()
    assert bounds[-1] < exact + 4 * curve[-1]["mc_stderr"]


def test_same_seed_same_estimate_and_max_bytes_keeps_the_stream(tiny, all_images):
    a = evaluate_nll(tiny, [all_images], 300, chunk_size=50, seed=7)
    b = evaluate_nll(tiny, [all_images], 300, chunk_size=50, seed=7)
    assert a == b
    # a cap that allows exactly 50 samples of all 16 images gives the chunk_size=50 stream
    per_sample = 4 * widest_layer(tiny) * 8 * len(all_images)
    c = evaluate_nll(tiny, [all_images], 300, chunk_size=None, seed=7, max_bytes=50 * per_sample)
    assert c["nll"] == a["nll"]


def test_chunk_plan_respects_the_budget():
    model = IWAEModel(784, [50], [[200, 200]])
    assert widest_layer(model) == 784
    row = 4 * 784 * 4  # LIVE_TENSORS x widest x float32
    assert chunk_plan(model, 100, 5000, 500, max_bytes=None) == (100, 500)
    assert chunk_plan(model, 100, 5000, 500, max_bytes=30 * 100 * row) == (100, 30)
    assert chunk_plan(model, 100, 5000, 500, max_bytes=10**12) == (100, 500)
    assert chunk_plan(model, 100, 5000, None, max_bytes=10 * row) == (10, 1)  # splits images


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from iwae.evaluation import log_likelihood
    from iwae.model import IWAEModel
    torch.set_num_threads(1)
    model = IWAEModel(1024, [8], [[32]]).eval()
    x = torch.bernoulli(torch.full((64, 1024), 0.3))
    log_likelihood(model, x, 4, chunk_size=4)  # warm up kernels and the allocator
    def mib(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024
    def peak_growth(**kw):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        base = mib("VmRSS:")
        log_likelihood(model, x, 400, **kw)
        return mib("VmHWM:") - base
    capped = peak_growth(chunk_size=None, max_bytes=int(sys.argv[1]))
    uncapped = peak_growth(chunk_size=None)  # one chunk of 400 samples: ~4 x 105 MB
    print(capped, uncapped)
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_stays_under_the_cap():
    """Peak resident memory of a fresh process, its high-water mark reset just before each
    estimate: under the cap with it, far over without it (so the measurement sees a breach)."""
    cap_mib = 16
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(cap_mib * 2**20)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    capped, uncapped = float(out[0]), float(out[1])
    assert capped < cap_mib + 4  # a few MiB of slack: allocator rounding, small temporaries
    assert uncapped > 4 * cap_mib


def test_active_units_counts_units_whose_mean_varies():
    torch.manual_seed(0)
    model = IWAEModel(20, latent_dims=[6, 3], hidden_dims=[[10], [5]]).eval()
    with torch.no_grad():
        head = model.encoder[0].head  # rows 0..5: means of h1; 6..11: log-stds
        head.weight[:2].zero_()  # units 0, 1: constant mean, so inactive
        head.bias[:2] = 1.0
        head.weight[2:6].mul_(5.0)  # units 2..5: the mean moves with x
    x = torch.bernoulli(torch.full((300, 20), 0.5))
    counts, variances = active_units(model, [x[:100], x[100:]], threshold=0.01, seed=0)
    assert counts[0] == 4 and len(counts) == 2 and len(variances[1]) == 3
    assert torch.all(variances[0][:2] < 1e-20)
    means = model.encoder_means(x, 100, torch.Generator().manual_seed(0))[0].double()
    torch.testing.assert_close(variances[0], means.var(0, unbiased=False), rtol=1e-9, atol=1e-12)
    assert format_units(counts) == f"4+{counts[1]}"


def test_progress_bar_only_on_a_terminal_unless_asked(capsys):
    from iwae.evaluation import _progress

    assert _progress(10, "x", None).disable  # pytest captures stderr: not a terminal
    assert not _progress(10, "x", True).disable
    assert _progress(10, "x", False).disable
