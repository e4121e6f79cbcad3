"""The memory estimates that refuse a run before training: above the real peak, yet low enough
that the paper's own settings pass on a modest machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from iwae.launch.memory_check import evaluation_bytes, training_step_bytes
from iwae.model import IWAEModel

GiB = 2**30


def meta_model(latent_dims: list[int], hidden_dims: list[list[int]]) -> IWAEModel:
    with torch.device("meta"):
        return IWAEModel(784, latent_dims, hidden_dims)


TWO_LAYER = ([100, 50], [[200, 200], [100, 100]])


def test_the_papers_settings_fit_in_4_gib():
    model = meta_model(*TWO_LAYER)
    assert training_step_bytes(model, 50, 20) < 4 * GiB  # Table 1's largest k
    assert training_step_bytes(model, 5000, 20) < 4 * GiB  # k=5000 training, as the manual shows
    assert evaluation_bytes(model, 500, 5000, 500, None) < 4 * GiB  # the k=5000 test NLL


STEP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from iwae.model import IWAEModel
    from iwae.objectives import IWAE
    torch.set_num_threads(1)
    model = IWAEModel(784, [100, 50], [[200, 200], [100, 100]])
    x = torch.bernoulli(torch.full((20, 784), 0.3))
    def step(k):
        IWAE(k, "dreg")(model, x).loss.backward()
    step(2)  # warm up kernels and the allocator
    def kib(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    base = kib("VmRSS:")
    step(int(sys.argv[1]))
    print((kib("VmHWM:") - base) * 1024)
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_training_step_estimate_is_above_the_measured_peak():
    """Two layers with DReG (its extra forward pass makes it the heaviest estimator), k=1000."""
    k = 1000
    out = subprocess.run(
        [sys.executable, "-c", STEP_SCRIPT, str(k)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    measured = int(out.stdout.split()[-1])
    estimate = training_step_bytes(meta_model(*TWO_LAYER), k, 20)
    assert measured > estimate / 4  # the measurement saw the step (not all allocator noise)
    assert measured < estimate
