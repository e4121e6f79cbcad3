"""torch's CPU kernel constants mapped ahead (`iwae.launch.cpu_pages`): which mappings are
chosen, that they are resident afterwards, and that every entry point that computes does it.
The speed it buys is measured by ``benchmarks/cpu_pages.py``, not here."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from iwae.launch import cpu_pages
from iwae.launch.cpu_pages import read_only_data
from iwae.launch.run import train
from tests.helpers import compose_config

LIB = "/venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so"
MAPS = f"""\
7f0000000000-7f0000100000 r--p 00000000 08:01 11 {LIB}
7f0000100000-7f0000900000 r-xp 00100000 08:01 11 {LIB}
7f0000900000-7f0000b00000 r--p 00900000 08:01 11 {LIB}
7f0000b00000-7f0000b10000 rw-p 00b00000 08:01 11 {LIB}
7f0000b10000-7f0000b20000 r--p 00b10000 08:01 11 {LIB}
7f0000c00000-7f0000d00000 r--p 00200000 08:01 12 /usr/lib/libm.so.6
7f0000d00000-7f0000e00000 rw-p 00000000 00:00 0
"""


def test_only_the_libraries_read_only_data_after_its_code_is_chosen() -> None:
    assert read_only_data(MAPS) == [
        (0x7F0000900000, 0x7F0000B00000),
        (0x7F0000B10000, 0x7F0000B20000),
    ]
    assert read_only_data(MAPS.replace("r-xp", "r--p")) == []  # no code: nothing to choose
    assert read_only_data("") == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_the_chosen_pages_are_resident_afterwards_and_a_second_call_does_nothing() -> None:
    # A fresh process: this one has run many kernels already.
    script = textwrap.dedent(
        """
        import json, torch
        from pathlib import Path
        from iwae.launch.cpu_pages import populate_kernel_constants, read_only_data

        def resident():
            ranges = read_only_data(Path("/proc/self/maps").read_text())
            rss, inside = {}, None
            for line in Path("/proc/self/smaps").read_text().splitlines():
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    start, end = (int(a, 16) for a in head.split("-"))
                    inside = (start, end) if (start, end) in ranges else None
                elif inside and head == "Rss:":
                    rss[inside] = int(line.split()[1]) * 1024
            return {f"{s:x}": [rss.get((s, e), 0), e - s] for s, e in ranges}

        before = resident()
        mapped = populate_kernel_constants()
        print(json.dumps([before, resident(), mapped, populate_kernel_constants()]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    before, after, mapped, again = __import__("json").loads(out.stdout.splitlines()[-1])
    assert after and mapped == sum(size for _, size in after.values())
    assert all(rss == size for rss, size in after.values()), after
    assert any(rss < size for rss, size in before.values()), before  # loading maps only part
    assert again == 0


def test_training_maps_them(tmp_path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cpu_pages, "_done", False)
    real = cpu_pages.populate_kernel_constants
    monkeypatch.setattr(
        "iwae.launch.run.populate_kernel_constants", lambda: calls.append("mapped") or real()
    )
    tiny = ["logger=none", "data.split=[100,20,20]", "schedule.epochs=1", "eval.enabled=false"]
    train(compose_config(tiny, tmp_path), tmp_path)
    assert calls == ["mapped"]


def test_every_saved_run_loader_maps_them(tmp_path, monkeypatch) -> None:
    """`load_run`, the one loader of saved runs (mode=eval, every report tool, iwae.load)."""
    from iwae.launch import assembly

    tiny = ["logger=none", "data.split=[100,20,20]", "schedule.epochs=1", "eval.enabled=false"]
    train(compose_config(tiny, tmp_path), tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(assembly, "populate_kernel_constants", lambda: calls.append("mapped"))
    assembly.load_run(tmp_path / "checkpoints" / "last.ckpt")
    assert calls == ["mapped"]
