"""Shared helpers of the benchmarks: interleaved repeats, medians, machine facts, the JSON
and table outputs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from iwae.launch.cpu_pages import populate_kernel_constants


def set_threads(threads: int) -> None:
    """Pin intra-op threads for both sides. Why: on a shared, oversubscribed machine OpenMP's
    spinning workers make a multi-threaded batch-20 step tens of times slower (measured here:
    255 ms instead of 10 ms at k=1, 2 threads, load average 14), which says nothing about
    either implementation.

    Also maps torch's CPU kernel constants, as a run does (`iwae.launch.cpu_pages`): left as
    loaded, the first side to run a kernel that touches them would speed up every side timed
    after it (``benchmarks/cpu_pages.py``)."""
    torch.set_num_threads(threads)
    populate_kernel_constants()


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1m": round(load[0], 2),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an ``n x n @ n x n`` float32 matmul: the machine's attainable rate, the
    best of ``repeats`` (the best is the one least disturbed by other processes)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: first call allocates and picks the kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def print_report(
    report: dict[str, Any], columns: Sequence[tuple[str, str]], out: str | None = None
) -> None:
    """JSON on stdout first (machine-readable), then a fixed-width table of ``report['rows']``;
    the JSON also to the file ``out`` if given (the numbers in docs/ come from such files)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    rows = report["rows"]
    widths = [max(len(title), *(len(_fmt(r.get(key))) for r in rows)) for key, title in columns]
    print()
    print("  ".join(title.rjust(w) for (_, title), w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(key)).rjust(w) for (key, _), w in zip(columns, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return "" if value is None else str(value)
