"""Speed and peak memory of the k=5000 test log-likelihood: the project's
`iwae.evaluation.evaluate_nll` against a naive per-image loop.

Naive: for each test image, all k samples at once through the ``torch.distributions``
reference model (`benchmarks.reference`), then a log-sum-exp. Both sides run interleaved in
one process on the same images (``--images``, a subset of the test set: the time of the
10,000-image test set is extrapolated from it, per image, and reported as such).

Peak memory is measured apart, each side in a fresh subprocess with a 10,000-image test set
resident: the peak resident set size (``VmHWM``) minus the resident size just before the
evaluation. The child evaluates the first batch of images with k = 2 chunks: every chunk has
the same shapes whatever k, so the peak is that of k = 5000 (the running log-sum-exp is one
value per image).

    python -m benchmarks.evaluate            # one-layer model, 40 images, 3 repeats
    python -m benchmarks.evaluate --quick    # 10 images, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import machine, matmul_rate, median, print_report, set_threads
from benchmarks.reference import ReferenceIWAE
from iwae.evaluation import evaluate_nll
from iwae.model import IWAEModel

ARCHITECTURES = {
    "one_layer": ((50,), ((200, 200),)),
    "two_layer": ((100, 50), ((200, 200), (100, 100))),
}
TEST_IMAGES = 10_000


def make_model(arch: str) -> IWAEModel:
    torch.manual_seed(0)
    latent, hidden = ARCHITECTURES[arch]
    model = IWAEModel(784, latent, hidden).eval()
    model.init_output_bias(torch.full((784,), 0.13))  # MNIST's mean pixel, about
    return model


def test_images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((n, 784), 0.13), generator=g)


@torch.no_grad()
def naive_nll(reference: ReferenceIWAE, images: torch.Tensor, k: int) -> float:
    """Mean NLL, one image at a time, all k samples at once."""
    values = []
    for x in images:
        log_w = reference.log_weights(x[None], k).double()
        values.append(torch.logsumexp(log_w, 0) - math.log(k))
    return -torch.cat(values).mean().item()


def framework_nll(
    model: IWAEModel,
    images: torch.Tensor,
    k: int,
    batch: int,
    chunk: int | None,
    max_bytes: int | None,
) -> float:
    batches = list(images.split(batch))
    return evaluate_nll(model, batches, k, chunk, seed=0, max_bytes=max_bytes, progress=False)[
        "nll"
    ]


def time_sides(args: argparse.Namespace) -> dict[str, Any]:
    model = make_model(args.model)
    reference = ReferenceIWAE(784, *ARCHITECTURES[args.model]).load_from(model).eval()
    images = test_images(args.images)
    sides = {
        "framework": lambda: framework_nll(
            model, images, args.k, args.batch, args.chunk, args.max_bytes
        ),
        "naive": lambda: naive_nll(reference, images, args.k),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    nll: dict[str, float] = {}
    for rep in range(args.repeats):
        for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            start = time.perf_counter()
            nll[name] = sides[name]()
            times[name].append(time.perf_counter() - start)
    row: dict[str, Any] = {"model": args.model, "k": args.k, "images": args.images}
    for name, ts in times.items():
        per_image = median(ts) / args.images
        row[f"{name}_images_per_s"] = 1 / per_image
        row[f"{name}_10k_s_extrapolated"] = per_image * TEST_IMAGES
        row[f"{name}_nll"] = nll[name]
    row["speedup"] = median([n / f for f, n in zip(times["framework"], times["naive"])])
    row["times_s"] = times
    return row


def rss_kib(field: str) -> int:
    status = open("/proc/self/status").read()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


def memory_child(side: str, arch: str, batch: int, chunk: int, max_bytes: int | None) -> None:
    """Run in a fresh process: print the peak RSS increase of one batch of the evaluation."""
    model = make_model(arch)
    reference = ReferenceIWAE(784, *ARCHITECTURES[arch]).load_from(model).eval()
    images = test_images(TEST_IMAGES)  # the whole test set resident, as in a real evaluation
    k = 2 * chunk  # same chunk shapes as k=5000: same peak
    base = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    if side == "framework":
        evaluate_nll(model, [images[:batch]], k, chunk, seed=0, max_bytes=max_bytes, progress=False)
    else:
        naive_nll(reference, images[:2], chunk)  # the naive loop draws all k at once
    peak = rss_kib("VmHWM")
    print(
        json.dumps(
            {"base_mib": base / 1024, "peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024}
        )
    )


def measure_memory(
    side: str, args: argparse.Namespace, batch: int, chunk: int, max_bytes: int | None
) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.evaluate",
        "--memory-child",
        side,
        "--model",
        args.model,
        "--batch",
        str(batch),
        "--chunk",
        str(chunk),
        "--threads",
        str(args.threads),
    ]
    if max_bytes is not None:
        cmd += ["--max-bytes", str(max_bytes)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 images, 2 repeats")
    parser.add_argument("--model", default="one_layer", choices=list(ARCHITECTURES))
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=40, help="images timed (a subset)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20, help="images per evaluate_nll batch")
    parser.add_argument("--chunk", type=int, default=50, help="eval.chunk_size")
    parser.add_argument("--max-bytes", type=int, default=None, help="eval.max_bytes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-child", choices=["framework", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.model, args.batch, args.chunk, args.max_bytes)
        return {}
    if args.quick:
        args.images, args.repeats = 10, 2
    start_machine = machine()  # the load average before the run
    row = time_sides(args)
    report: dict[str, Any] = {
        "benchmark": "evaluate",
        "machine": start_machine,
        "matmul_gflops": matmul_rate() / 1e9,
        "settings": {"batch": args.batch, "chunk": args.chunk, "max_bytes": args.max_bytes},
        "rows": [row],
    }
    if not args.no_memory:
        report["memory_mib"] = {
            "framework": measure_memory("framework", args, args.batch, args.chunk, args.max_bytes),
            "naive": measure_memory("naive", args, 1, args.k, None),
            # the project's own defaults: data.eval_batch_size=500, eval.chunk_size=500
            "framework_defaults_500x500": measure_memory("framework", args, 500, 500, None),
        }
        row["framework_peak_extra_mib"] = report["memory_mib"]["framework"]["extra_mib"]
        row["naive_peak_extra_mib"] = report["memory_mib"]["naive"]["extra_mib"]
    report["machine"]["load_average_1m_end"] = machine()["load_average_1m"]
    columns = [
        ("model", "model"),
        ("k", "k"),
        ("images", "images timed"),
        ("framework_images_per_s", "framework img/s"),
        ("naive_images_per_s", "naive img/s"),
        ("speedup", "speedup"),
        ("framework_10k_s_extrapolated", "framework 10k s (extrap.)"),
        ("framework_peak_extra_mib", "framework peak MiB"),
        ("naive_peak_extra_mib", "naive peak MiB"),
    ]
    print_report(report, columns, args.out)
    return report


if __name__ == "__main__":
    main()
