"""``report.html``: self-contained (every image a data: URI), the same table as table1.md, and
rendered by a real browser (headless Chromium) into a non-blank page.

Chromium tests skip when no ``chromium`` binary is found; ``.ci/run`` installs it and sets
IWAE_REQUIRE_CHROMIUM=1, which turns the skip into a failure."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from iwae.reports.runs import Run
from iwae.reports.table1 import report, sample_pngs

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)


def fake_run(root: Path, name: str, objective: str, k: int, nll: float) -> None:
    """A finished MNIST run (the paper's data): metrics.json, a CSV log and samples.png."""
    run = root / name
    (run / "csv" / "version_0").mkdir(parents=True)
    metrics = {
        "data": "mnist",
        "binarization": "dynamic",
        "objective": objective,
        "k": k,
        "test/nll": nll,
        "test/nll_stderr": 0.4,
        "test/images": 100,
        "eval/k": 5000,
        "test/active_units": 20,
        "test/active_units_per_layer": [20],
        "val/bound": -nll - 1,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    with open(run / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "val/bound"])
        writer.writerows([[s, -nll - 20 / (s + 1)] for s in (9, 19, 29)])
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(k))
    torchvision.utils.save_image(images, run / "samples.png", nrow=8)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("sweep")
    for i, (objective, k) in enumerate([("vae", 1), ("vae", 5), ("iwae", 1), ("iwae", 5)]):
        fake_run(root, str(i), objective, k, 90.0 - k / 10 - (objective == "iwae"))
    return root, report(root, checkpoints=False)


class Page(HTMLParser):
    """The page's table rows (cell texts) and <img> sources."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def markdown_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


def test_report_html_is_self_contained_and_holds_the_table(sweep):
    root, paths = sweep
    page = Page(paths["report_html"].read_text())
    assert page.rows == markdown_rows(paths["table1_md"].read_text())
    assert ["1", "5", "89.50 ± 0.40 (20)", "88.50 ± 0.40 (20)", "86.47 (20)", "85.54 (22)"] in (
        page.rows
    )
    # nll_vs_k and learning_curves, then the four runs' samples.png: all embedded
    assert len(page.images) == 6
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    text = paths["report_html"].read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert "bound_vs_k.png: not drawn: --no-checkpoints" in text


def chromium(*args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        problem = "no chromium binary on PATH (Debian: apt-get install chromium)"
        if os.environ.get("IWAE_REQUIRE_CHROMIUM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_chromium_renders_the_report(sweep, tmp_path):
    root, paths = sweep
    url = paths["report_html"].as_uri()
    dom = Page(chromium("--dump-dom", url).stdout)
    assert len(dom.rows) == len(markdown_rows(paths["table1_md"].read_text()))
    assert len(dom.images) == 6 and all(src.startswith("data:image/png") for src in dom.images)
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000", url)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape == (3000, 1200, 3)
    assert pixels.std() > 10  # not a blank page: text, table lines and figures drew
    # the embedded figures decoded and drew: the page's own text is black, grey and red, while
    # nll_vs_k's VAE lines are matplotlib's blue (C0)
    blue = (pixels[..., 2] - pixels[..., 0] > 80).sum()
    assert blue > 100


def test_many_runs_show_only_the_best_runs_samples(tmp_path):
    runs = []
    for i in range(13):  # one cell, 13 seeds: the page shows the one with the best val bound
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "samples.png").write_bytes(b"png")
        metrics = {"data": "mnist", "objective": "iwae", "k": 5, "test/nll": 90.0}
        runs.append(Run(tmp_path / str(i), metrics | {"val/bound": -90.0 - abs(i - 7)}))
    assert list(sample_pngs(runs).values()) == [tmp_path / "7" / "samples.png"]
    assert len(sample_pngs(runs[:12])) == 12
