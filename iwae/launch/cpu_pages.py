"""Mapping torch's CPU kernel constants into the process before the first step.

Why: torch's vectorised ``log1p`` and ``expm1`` (Sleef's AVX-512 code, which ``softplus``,
``binary_cross_entropy_with_logits`` and every Bernoulli log-likelihood here go through) read
a few constants with *masked* loads. While the page that holds them has not been touched by an
ordinary load, the page is not mapped into the process, and a masked load from an unmapped
page does not fault it in: the CPU takes a slow assist on every call instead. On the
project's CPU machine (AMD EPYC, AVX-512) that made ``softplus`` of a ``[1000, 784]`` tensor
(the k = 50 step's logits) 7.5 ms instead of 1.2 ms, a third of an eager k = 50 training step,
until some other kernel happened to read a neighbouring constant. Which kernels do that, and
when, depends on what ran before: the same step was fast or slow by the order of unrelated
calls (``benchmarks/cpu_pages.py`` measures both).

`populate_kernel_constants` maps libtorch_cpu's read-only data (about 18 MiB of shared,
file-backed pages, already in the page cache) with one ``madvise(MADV_POPULATE_READ)`` per
mapping, or by reading one byte per page where the kernel is older than Linux 5.14. Values are
unchanged: only where the constants are read from.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARY = "libtorch_cpu.so"
MADV_POPULATE_READ = 22  # linux/mman.h, Linux 5.14
_done = False


def read_only_data(maps: str, library: str = LIBRARY) -> list[tuple[int, int]]:
    """``[(start, end)]`` of ``library``'s read-only, non-executable mappings that come after
    its code in the file (``.rodata`` and what follows it), from ``/proc/<pid>/maps`` text.
    The mappings before the code (symbol and relocation tables) hold no kernel constants."""
    rows = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith("/" + library):
            start, end = (int(a, 16) for a in fields[0].split("-"))
            rows.append((fields[1], int(fields[2], 16), start, end))
    code = [offset for perms, offset, _, _ in rows if "x" in perms]
    if not code:
        return []
    return [
        (start, end)
        for perms, offset, start, end in rows
        if perms.startswith("r") and "w" not in perms and "x" not in perms and offset > code[0]
    ]


def populate_kernel_constants() -> int:
    """Map torch's CPU kernel constants into this process (see the module's docstring);
    return the bytes mapped (0 where there is nothing to do: not Linux, no libtorch_cpu, or
    done already). Never raises: a failure costs speed only, and is logged."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return 0
    _done = True
    try:
        ranges = read_only_data(Path("/proc/self/maps").read_text())
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start, end in ranges:
            if libc.madvise(start, end - start, MADV_POPULATE_READ) != 0:
                for page in range(start, end, mmap.PAGESIZE):  # Linux before 5.14
                    ctypes.string_at(page, 1)
    except (OSError, AttributeError, ValueError) as error:
        log.info("torch's CPU kernel constants were not mapped ahead: %s", error)
        return 0
    mapped = sum(end - start for start, end in ranges)
    log.info("torch's CPU kernel constants mapped ahead: %.1f MiB", mapped / 2**20)
    return mapped
