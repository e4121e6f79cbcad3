"""The paper's test measures: the k-sample log-likelihood estimate, the bound as a function of
k, and active units (Burda et al. 2015, sec. 5).

Every estimate streams importance samples in chunks and keeps a running log-sum-exp in
float64, so memory is bounded by the chunk, not by k, and k = 5000 adds no rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from iwae import ais
from iwae.errors import UserError, check_positive_int
from iwae.layer_widths import measured_widths

# Tensors of shape [chunk, images, widest layer] alive at once inside `log_weights`: the
# Bernoulli logits, x * logits, softplus(logits) and their difference. Checked by
# tests/test_evaluation.py, which measures peak memory against the cap.
LIVE_TENSORS = 4
BOUND_KS = (1, 5, 50, 500, 5000)


def widest_layer(model: nn.Module) -> int:
    """The largest feature width any ``[samples, images, width]`` tensor of ``model`` has: its
    linear layers' widths, or a wider output measured in one pass (`iwae.layer_widths`)."""
    widths = [getattr(model, "input_dim", 1), *measured_widths(model)]
    for m in model.modules():
        if isinstance(m, nn.Linear):
            widths += [m.in_features, m.out_features]
    return max(widths)


def chunk_plan(
    model: nn.Module, batch_size: int, k: int, chunk_size: int | None, max_bytes: int | None
) -> tuple[int, int]:
    """(images per pass, samples per chunk) that keep one chunk's tensors under ``max_bytes``.

    A chunk of n samples over b images holds about ``LIVE_TENSORS * n * b * widest * itemsize``
    bytes. When even one sample of every image exceeds the budget, the images are split too.
    """
    chunk = min(k, chunk_size or k)
    if max_bytes is None:
        return batch_size, chunk
    itemsize = next(model.parameters()).element_size()
    rows = max_bytes // (LIVE_TENSORS * widest_layer(model) * itemsize)  # sample-image rows
    if rows < 1:
        raise UserError(f"eval.max_bytes={max_bytes} is too small for one sample of one image")
    if rows >= batch_size:
        return batch_size, max(1, min(chunk, rows // batch_size))
    return int(rows), 1


def log_weight_chunks(
    model: nn.Module,
    x: Tensor,
    k: int,
    chunk_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """k log weights of every image of ``x`` ``[B, D]``, as float64 chunks ``[n <= chunk, B]``."""
    done = 0
    while done < k:
        n = min(chunk_size, k - done)
        yield model.log_weights(x, n, generator=generator).double()
        done += n


@torch.no_grad()
def log_likelihood(
    model: nn.Module,
    x: Tensor,
    k: int,
    chunk_size: int | None = 1000,
    generator: torch.Generator | None = None,
    max_bytes: int | None = None,
) -> Tensor:
    """The k-sample bound log (1/k) sum_i w_i per image (eq. 8), streamed over sample chunks.

    Args:
        x: binary images ``[B, D]``.
        k: importance samples per image.
        chunk_size: samples per chunk (None: all k at once).
        generator: the noise source; the same seed gives the same estimate.
        max_bytes: cap on the memory of one chunk; lowers the chunk (and splits the images)
            to fit. None: no cap beyond ``chunk_size``.
    Returns:
        ``[B]`` float64, lower bounds on log p(x) in nats.
    """
    check_positive_int("eval.k", k)
    if chunk_size is not None:
        check_positive_int("eval.chunk_size", chunk_size)
    images, chunk = chunk_plan(model, x.shape[0], k, chunk_size, max_bytes)
    out = []
    for xb in x.split(images):
        total = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        for log_w in log_weight_chunks(model, xb, k, chunk, generator):
            total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
        out.append(total)
    return torch.cat(out) - math.log(k)


def _nonempty(batches: Iterable[Tensor]) -> list[Tensor]:
    batches = [x for x in batches if len(x)]
    if not batches:
        raise UserError("nothing to evaluate: the test split has no images")
    return batches


def _progress(total: int, desc: str, enabled: bool | None) -> tqdm:
    """A bar over images: on (True), off (False), or None: only on a terminal, so that logs,
    CI and pytest's captured output get none (tqdm's ``disable=None``)."""
    disable = None if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit="img", disable=disable, leave=False)


@torch.no_grad()
def per_image_log_likelihood(
    model: nn.Module,
    batches: Iterable[Tensor],
    k: int,
    chunk_size: int | None = 1000,
    seed: int = 0,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> Tensor:
    """``[N]`` float64: the k-sample bound of every image of ``batches`` ``[B, D]``, in order.

    One generator seeded with ``seed`` serves every batch in order: two evaluations of one
    model on the same batches agree exactly.
    """
    batches = _nonempty(batches)
    generator = torch.Generator(device=batches[0].device).manual_seed(seed)
    values = []
    with _progress(sum(len(x) for x in batches), f"log p(x), k={k}", progress) as bar:
        for x in batches:
            values.append(log_likelihood(model, x, k, chunk_size, generator, max_bytes).cpu())
            bar.update(len(x))
    return torch.cat(values)


def _mean_stderr(ll: Tensor) -> tuple[float, float]:
    """(mean, standard error of the mean over images; NaN for one image)."""
    stderr = ll.std().item() / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")
    return ll.mean().item(), stderr


@torch.no_grad()
def evaluate_nll(
    model: nn.Module,
    batches: Iterable[Tensor],
    k: int,
    chunk_size: int | None = 1000,
    seed: int = 0,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> dict[str, float]:
    """Mean test NLL (positive nats) with k importance samples over all ``batches`` ``[B, D]``.

    ``nll_stderr`` is the standard error of the mean over images (data spread, not Monte
    Carlo error). Reproducible: see `per_image_log_likelihood`.
    """
    ll = per_image_log_likelihood(model, batches, k, chunk_size, seed, max_bytes, progress)
    mean, stderr = _mean_stderr(ll)
    return {"nll": -mean, "nll_stderr": stderr, "images": len(ll)}


class GroupedBound:
    """L_k of consecutive, disjoint groups of k samples, fed one chunk of log weights at a time.

    Lets one stream of K samples per image give every L_k with k <= K at once: each image's
    K samples form floor(K / k) independent draws of the k-sample estimate, whose spread is
    its Monte Carlo error. Per image it keeps the sum and sum of squares of group values.
    """

    def __init__(self, k: int, images: int, device: torch.device | str = "cpu") -> None:
        self.k = check_positive_int("k", k)
        zeros = torch.zeros(images, dtype=torch.float64, device=device)
        self.open, self.filled = torch.full_like(zeros, -math.inf), 0  # partial group
        self.sum, self.sum_sq, self.groups = zeros.clone(), zeros.clone(), 0

    def _close(self, lse: Tensor) -> None:
        """Record completed groups ``[G, B]`` given their log-sum-exp of weights."""
        values = lse - math.log(self.k)
        self.sum += values.sum(0)
        self.sum_sq += values.square().sum(0)
        self.groups += values.shape[0]

    def add(self, log_w: Tensor) -> None:
        """Feed the next ``[n, B]`` float64 log weights."""
        if self.filled:  # first top up the group left open by the previous chunk
            take = min(self.k - self.filled, log_w.shape[0])
            self.open = torch.logaddexp(self.open, torch.logsumexp(log_w[:take], 0))
            self.filled, log_w = self.filled + take, log_w[take:]
            if self.filled < self.k:
                return
            self._close(self.open[None])
            self.open, self.filled = torch.full_like(self.open, -math.inf), 0
        full = log_w.shape[0] // self.k
        if full:
            grouped = log_w[: full * self.k].reshape(full, self.k, -1)
            self._close(torch.logsumexp(grouped, 1))
        rest = log_w[full * self.k :]
        if rest.shape[0]:
            self.open, self.filled = torch.logsumexp(rest, 0), rest.shape[0]

    def mean(self) -> Tensor:
        """``[B]``: each image's L_k averaged over its groups."""
        return self.sum / self.groups

    def mc_variance(self) -> Tensor:
        """``[B]``: Monte Carlo variance of ``mean()`` (needs at least two groups)."""
        g = self.groups
        return (self.sum_sq - self.sum.square() / g).clamp(min=0) / (g - 1) / g


def delta_variance(lse_w: Tensor, lse_w2: Tensor, k: int) -> Tensor:
    """Delta-method Monte Carlo variance of log (1/k) sum_i w_i from one group of k samples.

    Var[log mean w] ~ Var[w] / (k E[w]^2), estimated as k/(k-1) (sum w^2 / (sum w)^2 - 1/k),
    i.e. about 1/ESS - 1/k, with ``lse_w`` = logsumexp(log w) and ``lse_w2`` =
    logsumexp(2 log w), each ``[B]``. Optimistic when the weights are heavy-tailed.
    """
    if k < 2:
        return torch.full_like(lse_w, math.nan)
    return (torch.exp(lse_w2 - 2 * lse_w) - 1.0 / k).clamp(min=0) * k / (k - 1)


def _image_bounds(
    model: nn.Module, x: Tensor, ks: Sequence[int], chunk: int, generator: torch.Generator | None
) -> list[tuple[Tensor, Tensor]]:
    """For each k: (L_k per image ``[B]``, its Monte Carlo variance ``[B]``), from one stream
    of max(ks) samples; the largest k, with one group, gets the delta-method variance."""
    top = max(ks)
    groups = [GroupedBound(k, x.shape[0], x.device) for k in ks]
    lse = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    lse2 = lse.clone()
    for log_w in log_weight_chunks(model, x, top, chunk, generator):
        for g in groups:
            g.add(log_w)
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
        lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * log_w, 0))
    return [
        (g.mean(), g.mc_variance() if g.groups > 1 else delta_variance(lse, lse2, top))
        for g in groups
    ]


@torch.no_grad()
def bound_vs_k(
    model: nn.Module,
    batches: Iterable[Tensor],
    ks: Sequence[int] = BOUND_KS,
    chunk_size: int | None = 1000,
    seed: int = 0,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> list[dict[str, float]]:
    """The test-set bound L_k for every k in ``ks``, with its Monte Carlo standard error.

    One stream of K = max(ks) samples per image serves every k (floor(K/k) disjoint groups
    each), so the whole curve costs one k = K evaluation. Returns, per k: ``bound`` (mean over
    images of L_k, nats), ``mc_stderr`` (Monte Carlo error of that mean: sampling noise only),
    ``data_stderr`` (spread over images) and ``groups`` (independent estimates per image).
    """
    ks = sorted({check_positive_int("k", k) for k in ks})
    batches = _nonempty(batches)
    generator = torch.Generator(device=batches[0].device).manual_seed(seed)
    means: list[list[Tensor]] = [[] for _ in ks]
    variances: list[list[Tensor]] = [[] for _ in ks]
    with _progress(sum(len(x) for x in batches), f"L_k, k<={ks[-1]}", progress) as bar:
        for x in batches:
            images, chunk = chunk_plan(model, x.shape[0], ks[-1], chunk_size, max_bytes)
            for xb in x.split(images):
                for i, (m, v) in enumerate(_image_bounds(model, xb, ks, chunk, generator)):
                    means[i].append(m.cpu())
                    variances[i].append(v.cpu())
            bar.update(len(x))
    out = []
    for k, m, v in zip(ks, means, variances):
        m, v = torch.cat(m), torch.cat(v)
        n = len(m)
        out.append(
            {
                "k": k,
                "bound": m.mean().item(),
                "mc_stderr": v.sum().sqrt().item() / n,
                "data_stderr": m.std().item() / math.sqrt(n) if n > 1 else math.nan,
                "groups": ks[-1] // k,
            }
        )
    return out


@torch.no_grad()
def active_units(
    model: nn.Module,
    batches: Iterable[Tensor],
    threshold: float = 0.01,
    n_samples: int = 100,
    seed: int = 0,
) -> tuple[list[int], list[Tensor]]:
    """Units u with Cov_x(E_q[u | x]) > ``threshold`` (Burda et al. 2015, sec. 5.2).

    E_q[u | x] is exact for the first stochastic layer and averaged over ``n_samples`` draws
    of the layers below for deeper ones (``IWAEModel.encoder_means``); its variance is taken
    over all images of ``batches`` (population variance, float64).

    Returns:
        (active count per stochastic layer, e.g. ``[26, 7]``; each layer's per-unit variance
        ``[d_l]``).
    """
    generator = None
    sums: list[Tensor] = []
    squares: list[Tensor] = []
    count = 0
    for x in batches:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(seed)
        means = [m.double() for m in model.encoder_means(x, n_samples, generator)]
        if not sums:
            sums = [torch.zeros_like(m[0]) for m in means]
            squares = [torch.zeros_like(m[0]) for m in means]
        for s, q, m in zip(sums, squares, means):
            s += m.sum(0)
            q += m.square().sum(0)
        count += means[0].shape[0]
    # E[m^2] - E[m]^2 in float64: the means are O(1), so cancellation costs ~1e-15.
    variances = [(q / count - (s / count).square()).clamp(min=0) for s, q in zip(sums, squares)]
    return [int((v > threshold).sum()) for v in variances], [v.cpu() for v in variances]


def format_units(per_layer: Sequence[int]) -> str:
    """Active units as the paper prints them: ``[26, 7] -> "26+7"``."""
    return "+".join(str(int(n)) for n in per_layer)


def test_metrics(model: nn.Module, batches: Iterable[Tensor], eval_cfg: Any) -> dict[str, Any]:
    """The keys a run writes to ``metrics.json`` (`evaluate`'s metrics)."""
    return evaluate(model, batches, eval_cfg)[0]


def evaluate(
    model: nn.Module, batches: Iterable[Tensor], eval_cfg: Any
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The test measures of ``eval_cfg`` (the ``eval`` config group): test NLL with
    ``eval_cfg.k`` samples, active units per layer and their variances, L_k for
    ``eval_cfg.bound_ks`` when set, AIS (`iwae.ais`) when ``eval.ais.steps`` > 0 and BDMC
    when ``eval.bdmc.images`` > 0.

    Returns (metrics, per-image values): ``log_p_is`` ``[N]`` and, with AIS, ``log_p_ais``
    ``[eval.ais.images or N]``, both float64 nats.

    The model is moved to the device of the batches: after ``trainer.fit`` Lightning's
    strategy teardown leaves the module on the CPU while the datamodule's tensors stay on the
    GPU, and evaluating one against the other would fail after the whole training run.
    """
    batches = _nonempty(batches)
    model = model.to(batches[0].device).eval()
    max_bytes, progress = eval_cfg.get("max_bytes"), eval_cfg.get("progress")
    ll = per_image_log_likelihood(
        model, batches, eval_cfg.k, eval_cfg.chunk_size, eval_cfg.seed, max_bytes, progress
    )
    mean, stderr = _mean_stderr(ll)
    units, variances = active_units(model, batches, eval_cfg.active_threshold, seed=eval_cfg.seed)
    metrics: dict[str, Any] = {
        "test/nll": -mean,
        "test/nll_stderr": stderr,
        "test/images": len(ll),
        "eval/k": eval_cfg.k,
        "eval/seed": eval_cfg.seed,
        "test/active_units": sum(units),
        "test/active_units_per_layer": units,
        "test/unit_variances": [v.tolist() for v in variances],
    }
    ks = eval_cfg.get("bound_ks") or []
    if ks:
        metrics["test/bound_vs_k"] = bound_vs_k(
            model, batches, ks, eval_cfg.chunk_size, eval_cfg.seed, max_bytes, progress
        )
    per_image = {"log_p_is": ll}
    if (eval_cfg.get("ais") or {}).get("steps", 0):
        total = min((eval_cfg.ais.get("images") or len(ll)), len(ll))
        with _progress(total, "AIS", progress) as bar:
            per_image["log_p_ais"] = ais.ais_metrics(
                model, batches, eval_cfg, ll, metrics, bar.update
            )
    if (eval_cfg.get("bdmc") or {}).get("images", 0):
        metrics.update(ais.bdmc_metrics(model, eval_cfg))
    return metrics, per_image
