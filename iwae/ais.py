"""Annealed importance sampling of log p(x) (Neal 2001), as Wu et al. (2017) evaluate
decoder-based models, and bidirectional Monte Carlo on simulated data (Grosse et al. 2015).

AIS moves chains from a normalised initial density f_0 (the encoder q(h | x), or the prior
p(h)) to the unnormalised target p(x, h) along the geometric path
log f_b(h) = (1 - b) log f_0(h) + b log p(x, h), b from 0 to 1 on a sigmoid schedule, with
Hamiltonian Monte Carlo transitions. The log weight of a chain is
sum_t (b_t - b_{t-1}) (log p(x, h_{t-1}) - log f_0(h_{t-1})); its exponential is an unbiased
estimate of p(x), so log mean_chains exp(log w) is a stochastic lower bound on log p(x) in
nats. With one step it is the importance weight log p(x, h) - log q(h | x) of the IWAE bound.

All stochastic layers h = (h_1, ..., h_L) are annealed jointly, as one vector ``z``
``[chains, images, sum(latent_dims)]``.

Step size. HMC's step size is adapted per image toward a target acceptance rate. A chain
whose own acceptances tuned its later kernels would make every kernel depend on the chain's
past, and AIS's weight would no longer be unbiased. Here the step size of an image is driven
only by ``TUNING_CHAINS`` extra chains of that image whose weights are discarded: given
them, every counted chain sees a fixed sequence of kernels, each leaving its f_b invariant,
so its weight stays an unbiased estimate of p(x). The reverse chains of BDMC reuse the
step sizes the forward run recorded for the same x, fixed in advance in the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from iwae.errors import UserError
from iwae.layer_widths import measured_widths

# Extra chains per image whose acceptance rates set that image's step size (module docstring).
TUNING_CHAINS = 2
# Multiplicative step-size update after each transition, and the range it is kept in (the
# rule of the BDMC code of Wu et al. 2017).
ADAPT_UP, ADAPT_DOWN = 1.02, 0.98
STEP_RANGE = (1e-4, 1.0)
SIGMOID_RADIUS = 4.0  # Grosse et al. 2015's sigmoid schedule
INITS = ("q", "prior")
# Memory of one chain of one image: each linear layer's output and the tensors autograd keeps
# for the gradient, for f_0's and the joint's graphs, counted this many times (high side).
GRAPH_COPIES = 4
DEFAULT_AIS_BYTES = 2**30  # images per pass are chosen to keep one pass under this


@dataclass(frozen=True)
class AISSettings:
    """One AIS configuration (``eval.ais``): ``steps`` distributions after f_0 (so
    ``steps - 1`` HMC transitions), ``chains`` counted chains per image, ``leapfrog`` steps
    per transition, initial ``step_size``, ``target_accept``, and ``init`` (q or prior)."""

    steps: int
    chains: int = 16
    leapfrog: int = 10
    step_size: float = 0.05
    target_accept: float = 0.65
    init: str = "q"


def sigmoid_schedule(steps: int) -> Tensor:
    """``[steps + 1]`` float64 inverse temperatures from 0 to 1 (Grosse et al. 2015, sec. 5)."""
    if steps == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.sigmoid(torch.linspace(-SIGMOID_RADIUS, SIGMOID_RADIUS, steps + 1).double())
    betas = (s - s[0]) / (s[-1] - s[0])
    betas[0], betas[-1] = 0.0, 1.0
    return betas


# --- AIS with HMC transitions ----------------------------------------------------------------
class _Path:
    """The geometric path from f_0 to p(x, h) for images ``x``: each density's value and
    gradient at ``z``, from which log f_b and its gradient follow for any b."""

    def __init__(self, model: nn.Module, x: Tensor, init: str) -> None:
        self.model, self.x, self.init = model, x, init

    def log_f0(self, z: Tensor) -> Tensor:
        return self.model.log_q(self.x, z) if self.init == "q" else self.model.log_prior(z)

    def parts(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log f_0, log p(x, h), their gradients) at ``z``; nothing keeps a graph."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            f0, joint = self.log_f0(z), self.model.log_joint(self.x, z)
            g0 = torch.autograd.grad(f0.sum(), z, retain_graph=True)[0]
            gj = torch.autograd.grad(joint.sum(), z)[0]
        return f0.detach(), joint.detach(), g0, gj


def _log_f(parts: tuple[Tensor, ...], beta: float) -> tuple[Tensor, Tensor]:
    f0, joint, g0, gj = parts
    return (1 - beta) * f0 + beta * joint, (1 - beta) * g0 + beta * gj


def _hmc(
    path: _Path,
    z: Tensor,
    parts: tuple[Tensor, ...],
    beta: float,
    eps: Tensor,
    leapfrog: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """One HMC transition leaving f_beta invariant (identity mass, ``leapfrog`` steps of size
    ``eps`` ``[1, B, 1]``). Returns the new state, its parts, and the acceptance probability
    ``[n, B]``. A non-finite energy is rejected, so a diverging trajectory changes nothing."""
    log_f, grad = _log_f(parts, beta)
    p = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    energy = -log_f + 0.5 * p.square().sum(-1)
    new_z, p = z, p + 0.5 * eps * grad
    for step in range(leapfrog):
        new_z = new_z + eps * p
        new_parts = path.parts(new_z)
        new_log_f, grad = _log_f(new_parts, beta)
        p = p + (eps if step < leapfrog - 1 else 0.5 * eps) * grad
    log_accept = energy - (-new_log_f + 0.5 * p.square().sum(-1))
    log_accept = torch.nan_to_num(log_accept, nan=-math.inf).clamp(max=0.0)
    u = torch.rand(log_accept.shape, generator=generator, device=z.device, dtype=z.dtype)
    accept = torch.log(u) < log_accept
    z = torch.where(accept[..., None], new_z, z)
    parts = tuple(
        torch.where(accept[..., None] if old.dim() == z.dim() else accept, new, old)
        for old, new in zip(parts, new_parts)
    )
    return z, parts, log_accept.exp()


def anneal(
    path: _Path,
    z: Tensor,
    betas: Tensor,
    settings: AISSettings,
    generator: torch.Generator | None,
    schedule: Tensor | None = None,
    tuning: int = 0,
) -> tuple[Tensor, Tensor]:
    """Run AIS from states ``z`` ``[n, B, d]`` (draws of f_{betas[0]}) along ``betas``.

    Args:
        schedule: ``[len(betas) - 2, B]`` fixed step sizes, one per transition; None: adapt
            each image's step size from the acceptance of the last ``tuning`` chains.
    Returns:
        (log weights ``[n, B]`` float64, the step sizes used ``[len(betas) - 2, B]``).
    """
    parts = path.parts(z)
    log_w = torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    step = torch.full(z.shape[1:2], float(settings.step_size), device=z.device, dtype=z.dtype)
    used = []
    for i in range(1, len(betas)):
        log_w += float(betas[i] - betas[i - 1]) * (parts[1] - parts[0]).double()
        if i == len(betas) - 1:
            break  # a transition after the last weight update would not change the weight
        eps = schedule[i - 1] if schedule is not None else step
        used.append(eps)
        z, parts, prob = _hmc(
            path, z, parts, float(betas[i]), eps[None, :, None], settings.leapfrog, generator
        )
        if schedule is None:
            rate = prob[-tuning:].mean(0)
            factor = torch.where(rate > settings.target_accept, ADAPT_UP, ADAPT_DOWN)
            step = (step * factor).clamp(*STEP_RANGE)
    empty = z.new_zeros((0, z.shape[1]))
    return log_w, torch.stack(used) if used else empty


def _log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def _forward(
    model: nn.Module, x: Tensor, settings: AISSettings, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Forward AIS on ``x`` ``[B, D]``: (counted chains' log weights ``[chains, B]``, the step
    sizes used ``[steps - 1, B]``). Counted chains draw their start first (so one step is
    ``log_weights`` under the same noise); tuning chains only exist when there are transitions."""
    tuning = TUNING_CHAINS if settings.steps > 1 else 0
    n = settings.chains + tuning
    if settings.init == "q":
        z = model.sample_q(x, settings.chains, generator)
        if tuning:
            z = torch.cat([z, model.sample_q(x, tuning, generator)])
    else:
        z = model.sample_prior((n, x.shape[0]), generator)
    path = _Path(model, x, settings.init)
    betas = sigmoid_schedule(settings.steps)
    log_w, used = anneal(path, z, betas, settings, generator, tuning=tuning)
    return log_w[: settings.chains], used


@torch.no_grad()
def ais_log_likelihood(
    model: nn.Module, x: Tensor, settings: AISSettings, generator: torch.Generator | None = None
) -> Tensor:
    """``[B]`` float64 AIS estimates of log p(x) in nats for ``x`` ``[B, D]``:
    log mean_chains exp(log w), a stochastic lower bound (E[exp] = p(x))."""
    check_settings(settings)
    log_w, _ = _forward(model, x, settings, generator)
    return _log_mean_exp(log_w)


@torch.no_grad()
def bdmc_bounds(
    model: nn.Module, n: int, settings: AISSettings, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Bidirectional Monte Carlo (Grosse et al. 2015) on ``n`` exact draws (h, x) of the model.

    Forward AIS gives a stochastic lower bound on each log p(x). Reverse AIS starts every
    chain at the exact posterior draw h (each chain's start is then exactly p(h | x), so each
    weight is an unbiased estimate of 1 / p(x)) and anneals back to f_0, with the step sizes
    the forward run used for that x; minus its log mean weight is a stochastic upper bound.

    Returns:
        (lower ``[n]``, upper ``[n]``) float64, nats.
    """
    check_settings(settings)
    h, x = model.sample_joint(n, generator)
    lower_w, used = _forward(model, x, settings, generator)
    path = _Path(model, x, settings.init)
    start = h[None].expand(settings.chains, *h.shape).contiguous()
    betas = sigmoid_schedule(settings.steps).flip(0)
    upper_w, _ = anneal(path, start, betas, settings, generator, schedule=used.flip(0))
    return _log_mean_exp(lower_w), -_log_mean_exp(upper_w)


def check_settings(settings: AISSettings) -> None:
    """One-line `UserError` for a value AIS cannot use (``eval.ais.*`` names)."""
    for name in ("steps", "chains", "leapfrog"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"eval.ais.{name} must be an integer >= 1, got {value!r}")
    size, accept = settings.step_size, settings.target_accept
    if isinstance(size, bool) or not isinstance(size, int | float) or not 0 < size < math.inf:
        raise UserError(f"eval.ais.step_size must be a number > 0, got {size!r}")
    if isinstance(accept, bool) or not isinstance(accept, int | float) or not 0 < accept < 1:
        raise UserError(f"eval.ais.target_accept must be a number in (0, 1), got {accept!r}")
    if settings.init not in INITS:
        raise UserError(f"eval.ais.init must be one of {', '.join(INITS)}, got {settings.init!r}")


def settings_from(node: Mapping[str, Any]) -> AISSettings:
    """`AISSettings` from an ``eval.ais`` config node (plain values, defaults for the rest)."""
    defaults = AISSettings(steps=0)
    names = ("steps", "chains", "leapfrog", "step_size", "target_accept", "init")
    return AISSettings(**{n: node.get(n, getattr(defaults, n)) for n in names})


def row_bytes(model: nn.Module) -> int:
    """Bytes one chain of one image holds during a leapfrog step (see ``GRAPH_COPIES``)."""
    linear = sum(m.out_features for m in model.modules() if hasattr(m, "out_features"))
    widths = model.input_dim + max(linear, sum(measured_widths(model)))  # conv feature maps
    return GRAPH_COPIES * widths * next(model.parameters()).element_size()


def images_per_pass(model: nn.Module, settings: AISSettings, max_bytes: int | None) -> int:
    """How many images one AIS pass anneals at once so that its chains fit ``max_bytes``
    (None: ``DEFAULT_AIS_BYTES``), or a one-line `UserError` if one image's do not."""
    per_image = (settings.chains + TUNING_CHAINS) * row_bytes(model)
    images = (max_bytes or DEFAULT_AIS_BYTES) // per_image
    if images < 1:
        raise UserError(
            f"eval.max_bytes={max_bytes} is too small for the {settings.chains} AIS chains of "
            f"one image (about {per_image} bytes); raise it or lower eval.ais.chains"
        )
    return int(images)


@torch.no_grad()
def evaluate_ais(
    model: nn.Module,
    batches: Sequence[Tensor],
    settings: AISSettings,
    seed: int,
    max_bytes: int | None = None,
    images: int | None = None,
    on_images: Callable[[int], None] | None = None,
) -> Tensor:
    """``[N]`` float64 AIS log p(x) of the first ``images`` (None: all) images of ``batches``
    ``[B, D]``, streamed ``images_per_pass`` at a time: memory is bounded whatever the test
    set. One generator seeded with ``seed`` serves all passes in order, so two evaluations
    agree exactly. ``on_images(n)`` is told after each pass (a progress bar)."""
    check_settings(settings)
    per_pass = images_per_pass(model, settings, max_bytes)
    generator = torch.Generator(device=batches[0].device).manual_seed(seed)
    out, left = [], math.inf if images is None else images
    for x in batches:
        for xb in x[: int(min(left, len(x)))].split(per_pass):
            out.append(ais_log_likelihood(model, xb, settings, generator).cpu())
            left -= len(xb)
            if on_images is not None:
                on_images(len(xb))
        if left <= 0:
            break
    return torch.cat(out)


@torch.no_grad()
def evaluate_bdmc(
    model: nn.Module, n: int, settings: AISSettings, seed: int, max_bytes: int | None = None
) -> dict[str, float]:
    """`bdmc_bounds` on ``n`` simulated images, in passes that fit ``max_bytes``: the mean
    lower and upper bounds on log p(x) (nats) and their gap, ``bdmc/*`` keys, each with its
    standard error over the images (``*_stderr``; the gap's from the per-image differences
    upper - lower, which share their image: a negative gap within about two of them is noise)."""
    check_settings(settings)
    per_pass = images_per_pass(model, settings, max_bytes)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    lower, upper = [], []
    for start in range(0, n, per_pass):
        lo, up = bdmc_bounds(model, min(per_pass, n - start), settings, generator)
        lower.append(lo.cpu())
        upper.append(up.cpu())
    lo, up = torch.cat(lower), torch.cat(upper)
    return {
        "bdmc/lower": lo.mean().item(),
        "bdmc/upper": up.mean().item(),
        "bdmc/gap": up.mean().item() - lo.mean().item(),
        "bdmc/lower_stderr": _stderr(lo),
        "bdmc/upper_stderr": _stderr(up),
        "bdmc/gap_stderr": _stderr(up - lo),
        "bdmc/images": n,
    }


def _stderr(values: Tensor) -> float:
    """Standard error of the mean of ``values`` ``[n]`` (nan for one value)."""
    return values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan


def _seed(eval_cfg: Any) -> int:
    """``eval.ais.seed``, or ``eval.seed`` when that is null."""
    seed = (eval_cfg.get("ais") or {}).get("seed")
    return eval_cfg.seed if seed is None else seed


def ais_metrics(
    model: nn.Module,
    batches: Sequence[Tensor],
    eval_cfg: Any,
    ll_is: Tensor,
    metrics: dict[str, Any],
    on_images: Callable[[int], None] | None = None,
) -> Tensor:
    """AIS log p(x) per image ``[n]`` of the ``eval`` config group's ``ais`` settings.

    Adds to ``metrics``: ``test/nll_ais`` and its standard error over images, and the paired
    difference log p_AIS - log p_IS with the importance-sampled ``ll_is`` ``[N]`` on the same
    images (``test/ais_minus_is``, mean and standard error over images).
    """
    settings, limit = settings_from(eval_cfg.ais), eval_cfg.ais.get("images")
    max_bytes = eval_cfg.get("max_bytes")
    ll = evaluate_ais(model, batches, settings, _seed(eval_cfg), max_bytes, limit, on_images)
    diff = ll - ll_is[: len(ll)]
    root_n = math.sqrt(len(ll))
    metrics.update(
        {
            "test/nll_ais": -ll.mean().item(),
            "test/nll_ais_stderr": ll.std().item() / root_n if len(ll) > 1 else math.nan,
            "test/ais_images": len(ll),
            "test/ais_minus_is": diff.mean().item(),
            "test/ais_minus_is_stderr": diff.std().item() / root_n if len(ll) > 1 else math.nan,
            "eval/ais": {**asdict(settings), "seed": _seed(eval_cfg)},
        }
    )
    return ll


def bdmc_metrics(model: nn.Module, eval_cfg: Any) -> dict[str, Any]:
    """`evaluate_bdmc` with ``eval.bdmc.images`` and ``eval.bdmc.steps`` (the other HMC
    settings from ``eval.ais``): ``bdmc/lower``, ``bdmc/upper``, ``bdmc/gap`` in nats, with
    their standard errors."""
    bdmc = eval_cfg.bdmc
    settings = replace(settings_from(eval_cfg.get("ais") or {}), steps=bdmc.steps)
    out = evaluate_bdmc(model, bdmc.images, settings, _seed(eval_cfg), eval_cfg.get("max_bytes"))
    return {**out, "eval/bdmc_steps": bdmc.steps}
