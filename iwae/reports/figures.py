"""The report's figures (matplotlib, PNG): NLL vs k, bound vs k, learning curves, the sorted
variances of the encoder means, and sample / reconstruction grids.

Every function takes plain numbers (or images) and a path, so the figures can be redrawn from
the report's files without a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from iwae.training.outputs import save_figure  # noqa: E402

STYLE = {"vae": "--", "iwae": "-"}  # the paper's two objectives; others get a dotted line
# Colour and line style both tell VAE from IWAE, so the figure survives greyscale printing and
# colour blindness; the marker tells the number of stochastic layers.
COLOUR = {"vae": "C0", "iwae": "C3"}
LAYER_MARKER = {1: "o", 2: "s"}


def _save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    save_figure(fig, path)  # a link at path is replaced, not followed
    plt.close(fig)
    return Path(path)


def _panels(n: int, width: float = 4.5, height: float = 3.5) -> tuple[plt.Figure, list]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def nll_vs_k(
    curves: Mapping[str, Mapping[tuple[str, int], Mapping[int, tuple[float, float | None]]]],
    path: str | Path,
    paper: Mapping[str, Mapping[tuple[str, int], Mapping[int, float]]] | None = None,
) -> Path:
    """Test NLL against the training k: one panel per dataset, one line per (objective,
    stochastic layers), with bars of one standard error; the paper's numbers as grey markers.

    Args:
        curves: ``{dataset: {(objective, layers): {k: (test NLL, standard error or None)}}}``.
        paper: the published NLLs of the same lines, ``{dataset: {(objective, layers): {k: NLL}}}``.
    """
    fig, axes = _panels(len(curves), width=6.5)
    for ax, (data, lines) in zip(axes, sorted(curves.items())):
        trained: set[int] = set()
        for (objective, layers), points in sorted(lines.items(), key=lambda kv: kv[0][::-1]):
            ks = sorted(points)
            trained.update(ks)
            stderr = [points[k][1] for k in ks]
            ax.errorbar(
                ks,
                [points[k][0] for k in ks],
                yerr=None if None in stderr else stderr,
                fmt=STYLE.get(objective, ":"),
                color=COLOUR.get(objective, "C2"),
                marker=LAYER_MARKER.get(layers, "^"),
                capsize=3,
                label=f"{objective.upper()}, {layers} layer{'s' * (layers > 1)}",
            )
        _paper_markers(ax, (paper or {}).get(data, {}))
        ax.set(xscale="log", xlabel="k (training samples)", ylabel="test NLL (nats)", title=data)
        _k_ticks(ax, trained)
        ax.legend(
            fontsize=7,
            title="bars: 1 standard error",
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),  # outside: the legend hides no point
        )
    return _save(fig, path)


def _paper_markers(ax: plt.Axes, lines: Mapping[tuple[str, int], Mapping[int, float]]) -> None:
    for (objective, layers), points in sorted(lines.items(), key=lambda kv: kv[0][::-1]):
        ks = sorted(points)
        ax.plot(
            ks,
            [points[k] for k in ks],
            linestyle="none",
            marker=LAYER_MARKER.get(layers, "^"),
            markerfacecolor="none" if objective == "vae" else "0.6",
            color="0.6",
            label=f"paper: {objective.upper()}, {layers} layer{'s' * (layers > 1)}",
        )


def _k_ticks(ax: plt.Axes, ks: set[int]) -> None:
    """Ticks at the k values that were trained (1, 5, 50), not at the log axis' powers of 10."""
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(ks)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(k) for k in sorted(ks)]))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def bound_vs_k(curve: Sequence[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """L_k on the test set against k with Monte Carlo error bars (2 standard errors).

    Args:
        curve: rows with ``k``, ``bound`` and ``mc_stderr`` (`iwae.evaluation.bound_vs_k`).
    """
    fig, (ax,) = _panels(1, width=5.5)
    ks = [row["k"] for row in curve]
    errors = [2 * row["mc_stderr"] if math.isfinite(row["mc_stderr"]) else 0 for row in curve]
    ax.errorbar(
        ks,
        [row["bound"] for row in curve],
        yerr=errors,
        marker="o",
        capsize=3,
        label="L_k, bars: 2 standard errors (Monte Carlo)",
    )
    ax.set(xscale="log", xlabel="k (evaluation samples)", ylabel="test L_k (nats)")
    ax.set_title(title, fontsize=8)
    _k_ticks(ax, set(ks))
    ax.legend(fontsize=7)
    return _save(fig, path)


def learning_curves(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], path: str | Path
) -> Path:
    """Validation bound against training step: ``{panel title: {line label: (steps, bounds)}}``."""
    fig, axes = _panels(len(panels))
    for ax, (title, lines) in zip(axes, sorted(panels.items())):
        for label, (steps, values) in sorted(lines.items()):
            style = STYLE.get(label.split()[0].lower(), ":")
            ax.plot(steps, values, style, marker=".", label=label)
        ax.set(xlabel="training step", ylabel="validation bound (nats)", title=title)
        ax.legend(fontsize=7)
    return _save(fig, path)


def unit_variances(
    panels: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, threshold: float = 0.01
) -> Path:
    """Each latent unit's variance over the data of E_q[u | x], sorted, on a log scale: the
    units above ``threshold`` are the active ones. ``{panel: {line label: variances}}``."""
    fig, axes = _panels(len(panels))
    for ax, (title, lines) in zip(axes, sorted(panels.items())):
        for label, variances in sorted(lines.items()):
            values = sorted((max(v, 1e-12) for v in variances), reverse=True)
            ax.plot(
                range(1, len(values) + 1),
                values,
                STYLE.get(label.split()[0].lower(), ":"),
                label=label,
            )
        ax.axhline(threshold, color="k", lw=0.8, ls=":", label=f"threshold {threshold:g}")
        ax.set(yscale="log", xlabel="unit (sorted)", ylabel="Var_x E_q[u|x]", title=title)
        ax.legend(fontsize=7)
    return _save(fig, path)


def image_grids(grids: Mapping[str, torch.Tensor], path: str | Path, ncols: int = 2) -> Path:
    """One panel per titled image batch ``[N, 1, H, W]`` (values in [0, 1]), each laid out by
    ``torchvision.utils.make_grid`` with 8 images a row."""
    n, first = len(grids), next(iter(grids.values()))
    rows, cols = math.ceil(n / ncols), min(n, ncols)
    aspect = math.ceil(len(first) / 8) * first.shape[-2] / (8 * first.shape[-1])  # grid H / W
    fig, axes = plt.subplots(
        rows, cols, figsize=(6 * cols, (6 * aspect + 0.5) * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, images) in zip(axes.flat, grids.items()):
        grid = torchvision.utils.make_grid(images, nrow=8, padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
