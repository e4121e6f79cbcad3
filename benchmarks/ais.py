"""Speed of the AIS estimate of log p(x) (`iwae.ais.evaluate_ais`): images per second at given
steps, chains and leapfrog steps, on the CPU or a GPU.

The model is the paper's architecture with Glorot weights (speed does not depend on training);
the images are random binary digits. Each repeat evaluates the same images from the same seed;
the median time is reported. The cost is about steps x leapfrog x (chains + tuning chains)
forward and backward passes per image, so other budgets scale from one measurement.

All images of a pass are annealed together (one ``[chains, images, D]`` batch per leapfrog
step), so the fixed cost of a step is shared: images per second grow with the number of images
evaluated at once until the arithmetic dominates. ``--images`` takes several counts to show it.

    python -m benchmarks.ais                                   # CPU, 10 images, 100 steps
    python -m benchmarks.ais --images 1 4 16 100 --steps 50 --chains 8 --leapfrog 5
    python -m benchmarks.ais --device cuda --images 500 --steps 1000 --chains 16
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import machine, median, print_report, set_threads
from benchmarks.evaluate import ARCHITECTURES, make_model, test_images
from iwae.ais import TUNING_CHAINS, AISSettings, evaluate_ais


def time_ais(args: argparse.Namespace, count: int) -> dict[str, Any]:
    """One row: ``count`` images evaluated at once with ``args``' settings."""
    device = torch.device(args.device)
    model = make_model(args.arch).to(device)
    images = test_images(count).to(device)
    settings = AISSettings(steps=args.steps, chains=args.chains, leapfrog=args.leapfrog)
    times, nll = [], None
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        ll = evaluate_ais(model, [images], settings, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        nll = -ll.mean().item()
    seconds = median(times)
    passes = args.steps * args.leapfrog * (args.chains + TUNING_CHAINS)
    return {
        "arch": args.arch,
        "device": str(device),
        "images": count,
        "steps": args.steps,
        "chains": args.chains,
        "leapfrog": args.leapfrog,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 3),
        "gradient_passes_per_s": round(count * passes / seconds),
        "nll_ais": nll,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="one_layer")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--images", type=int, nargs="+", default=[10], help="images at once")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    report = {"machine": machine(), "rows": [time_ais(args, n) for n in args.images]}
    report["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    columns = [
        ("arch", "arch"), ("device", "device"), ("images", "images"), ("steps", "steps"),
        ("chains", "chains"),
        ("leapfrog", "leapfrog"), ("images_per_s", "images/s"), ("seconds", "s"),
    ]  # fmt: skip
    print_report(report, columns, args.out)
    return report


if __name__ == "__main__":
    main()
