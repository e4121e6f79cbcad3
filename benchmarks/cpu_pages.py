"""What mapping torch's CPU kernel constants ahead (`iwae.launch.cpu_pages`) changes.

Each measurement runs in a fresh process, since the effect is a property of the process: in
one, torch's kernel constants are left as loading torch left them ("as loaded"), in the other
`populate_kernel_constants` maps them first ("populated"). The two kinds of process alternate,
``repeats`` times each; we report medians. One thread, subnormals flushed (as a run trains).

Timed in each process: ``softplus``, ``log1p``, ``expm1`` and ``binary_cross_entropy_with_logits``
of a ``[1000, 784]`` tensor (the logits of a k = 50, batch-20 step); an eager training step of
the paper's one-layer network at ``--k`` with the framework's model, objective and fused Adam
(no Lightning); the same step of the plain reference loop (``torch.distributions``); and the
k = 5000 bound of 10 test-like images.

    python -m benchmarks.cpu_pages --repeats 5 --out benchmarks/results/cpu_pages.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import machine, median, print_report

CONDITIONS = ("as_loaded", "populated")


def _ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeats


def measure_process(populate: bool, k: int, steps: int) -> dict[str, float]:
    """The timings of one process (see the module's docstring)."""
    from torch.distributions import Distribution

    from benchmarks.reference import ReferenceIWAE, iwae_loss
    from iwae.evaluation import log_likelihood
    from iwae.launch.cpu_pages import populate_kernel_constants
    from iwae.model import IWAEModel
    from iwae.objectives import IWAE

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    if populate:
        populate_kernel_constants()
    torch.manual_seed(0)
    logits = torch.randn(1000, 784) * 3 - 2
    x = torch.bernoulli(torch.full((1000, 784), 0.2))
    row = {
        "softplus_ms": _ms(lambda: F.softplus(logits), 20),
        "log1p_ms": _ms(lambda: torch.log1p(logits.sigmoid()), 20),
        "expm1_ms": _ms(lambda: torch.expm1(logits.tanh()), 20),
        "bce_with_logits_ms": _ms(
            lambda: F.binary_cross_entropy_with_logits(logits, x, reduction="none"), 20
        ),
    }
    model, objective = IWAEModel(784, [50], [[200, 200]]), IWAE(k=k)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4, fused=True)
    batch = torch.bernoulli(torch.full((20, 784), 0.2))

    def framework_step() -> None:
        loss = objective(model, batch).loss
        adam.zero_grad()
        loss.backward()
        adam.step()

    reference = ReferenceIWAE(784, [50], [[200, 200]]).load_from(model)
    reference_adam = torch.optim.Adam(reference.parameters(), lr=1e-3, eps=1e-4, fused=True)
    Distribution.set_default_validate_args(False)

    def reference_step() -> None:
        loss = iwae_loss(reference.log_weights(batch, k))
        reference_adam.zero_grad()
        loss.backward()
        reference_adam.step()

    row["framework_step_ms"] = _ms(framework_step, steps)
    row["reference_step_ms"] = _ms(reference_step, steps)
    with torch.no_grad():
        row["bound_k5000_10_images_ms"] = _ms(
            lambda: log_likelihood(model, batch[:10], 5000, chunk_size=1000), 3, warmup=1
        )
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="processes of each kind")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--out", help="also write the JSON report to this file")
    parser.add_argument("--child", choices=CONDITIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one process's measurement, as JSON on stdout
        print(json.dumps(measure_process(args.child == "populated", args.k, args.steps)))
        return {}
    start = machine()
    times: dict[str, list[dict[str, float]]] = {name: [] for name in CONDITIONS}
    for rep in range(args.repeats):
        for name in CONDITIONS if rep % 2 == 0 else CONDITIONS[::-1]:
            command = [sys.executable, "-m", "benchmarks.cpu_pages", "--child", name]
            command += ["--k", str(args.k), "--steps", str(args.steps)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            times[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    rows = []
    for key in times[CONDITIONS[0]][0]:
        row: dict[str, Any] = {"measure": key.removesuffix("_ms")}
        for name in CONDITIONS:
            row[f"{name}_ms"] = median([t[key] for t in times[name]])
        row["populated_over_as_loaded"] = median(
            [p[key] / a[key] for p, a in zip(times["populated"], times["as_loaded"])]
        )
        rows.append(row)
    start["load_average_1m_end"] = machine()["load_average_1m"]
    report = {
        "benchmark": "cpu_pages",
        "k": args.k,
        "machine": start,
        "threads": 1,
        "rows": rows,
        "times_ms": times,
    }
    columns = [
        ("measure", "measure"),
        ("as_loaded_ms", "as loaded ms"),
        ("populated_ms", "populated ms"),
        ("populated_over_as_loaded", "populated / as loaded"),
    ]
    print_report(report, columns, args.out)
    return report


if __name__ == "__main__":
    main()
