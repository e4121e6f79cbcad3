"""What a model and an objective must provide, tool by tool, checked when they are built.

A plug-in (a network or a bound in the user's own module, see `iwae.launch.plugins`) goes
through the same training, evaluation, AIS, BDMC and reports as this project's classes as
long as it has the methods those tools call. The tools are listed in `TOOLS`, each with the
methods it calls, and each method's signature is written down in the Protocols below
(`iwae.model.IWAEModel` implements all of them; read it as the worked example). A run checks
its model and objective when it builds them (`check_model`, `check_objective`) against the
tools it will use, so that a missing method is one line at the start,
``model mymodel.ConvNet has no log_joint, which eval.ais needs; see docs/extending.md``,
not a traceback hours into the run. A tool that is optional (the sample grid) is skipped with
one warning line instead (`optional_missing`).

Every tensor is in nats; images are ``x`` ``[B, D]`` with binary pixels as floats; ``z`` is all
stochastic layers' values concatenated, ``[..., sum of latent sizes]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from iwae.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

GUIDE = "docs/extending.md"


# --- the model ---------------------------------------------------------------------------------
class TrainableModel(Protocol):
    """What training needs (`iwae.objective_base.LatentVariableModel`, which the objectives
    call). ``init_output_bias`` is optional: called with the training set's mean pixel when
    the model has it (the paper's output-bias initialisation), skipped otherwise."""

    def log_weights(
        self, x: Tensor, k: int, generator: torch.Generator | None = None, detach_q: bool = False
    ) -> Tensor:
        """``[B, D] -> [k, B]``: log p(x, h_i) - log q(h_i | x) for k fresh draws h_i ~ q(h | x),
        every normalising constant included, so that log mean_i exp of it is a lower bound on
        log p(x). ``generator`` draws the noise (evaluation passes one, for reproducible
        numbers); ``detach_q`` holds q's parameters constant inside log q (the STL and DReG
        estimators), the draws still depending on them."""
        ...

    def generative_parameters(self) -> Sequence[nn.Parameter]:
        """theta: the parameters of p(x, h)."""
        ...

    def inference_parameters(self) -> Sequence[nn.Parameter]:
        """phi: the parameters of q(h | x)."""
        ...


class ActiveUnitsModel(Protocol):
    """What the active-units count needs (Burda et al. 2015, sec. 5.2)."""

    def encoder_means(
        self, x: Tensor, n_samples: int = 100, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """E_q[h_l | x] for every stochastic layer l, each ``[B, d_l]`` (a deeper layer's
        averaged over ``n_samples`` draws of the layers below it)."""
        ...


class AnnealableModel(Protocol):
    """What AIS needs (`iwae.ais`): densities at given latents and draws from q and p(h).
    ``input_dim`` (D) sizes the chains' memory."""

    input_dim: int

    def sample_q(self, x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, B, sum d_l]`` draws h ~ q(h | x) (``eval.ais.init=q``)."""
        ...

    def sample_prior(
        self, shape: Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """``[*shape, sum d_l]`` draws h ~ p(h) (``eval.ais.init=prior``)."""
        ...

    def log_q(self, x: Tensor, z: Tensor) -> Tensor:
        """log q(h | x) ``[n, B]`` at ``z`` ``[n, B, sum d_l]`` (``eval.ais.init=q``)."""
        ...

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(h) ``[n, B]`` (``eval.ais.init=prior``)."""
        ...

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, h) ``[n, B]``: the target density AIS anneals to."""
        ...


class SimulatingModel(AnnealableModel, Protocol):
    """What BDMC needs besides AIS: exact draws of the model to score."""

    def sample_joint(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` exact draws (h ``[n, sum d_l]``, binary x ``[n, D]``) of p(h) p(x | h)."""
        ...


class SamplingModel(Protocol):
    """What the sample grid (``samples.png``) needs; optional."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, D]`` Bernoulli means of x for ancestral draws from p."""
        ...


# --- the objective -----------------------------------------------------------------------------
class TrainingObjectiveContract(Protocol):
    """What the LightningModule trains with (`iwae.objective_base.TrainingObjective`; derive
    from `iwae.objective_base.Objective` to get everything but the bound itself).

    ``objective(model, x)`` returns an ``ObjectiveOutput``: ``loss`` (a scalar to minimise:
    only its gradient matters), ``bound`` ``[B]`` (detached) and ``log_w`` ``[num_samples,
    B]`` (detached). The logged ``train/bound`` is ``bound``'s mean: it must be a true lower
    bound on log p(x) in nats, whatever surrogate shapes the gradient."""

    name: str

    @property
    def k(self) -> int:
        """The paper's k of the bound training now (recorded in metrics.json)."""
        ...

    @property
    def num_samples(self) -> int:
        """Samples drawn per image at each step (memory is checked against it)."""
        ...

    def __call__(self, model: Any, x: Tensor) -> Any: ...

    def bound(self, log_w: Tensor) -> Tensor:
        """``[n, B] -> [B]``: the bound's value from log weights."""
        ...

    def on_train_epoch_start(self, epoch: int) -> None:
        """Told the (0-based) epoch when it starts; most bounds ignore it."""
        ...


# --- the data module ------------------------------------------------------------------------------
DATA_MODULE_NEEDS = ("prepare", "setup", "test_dataloader", "input_dim", "image_shape", "name")
"""A data module is a subclass of ``datamodules.base.BinarizedDataModule`` that implements
``load_splits() -> DataSplits`` (three float tensors of values in [0, 1], ``[N, H, W]`` or
``[N, D]``); the base class binarizes, batches and checkpoints them, and gives what the tools
read (`DATA_MODULE_NEEDS`, ``train_pixel_mean``, ``binarization``, ``splits``). Its ``name``
is the ``data`` column of the reports."""


# --- the tools ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tool:
    """A tool of this project (named as its setting is), the model methods (or attributes)
    it calls, the keywords a method must accept, and whether the run goes on without it."""

    name: str
    methods: tuple[str, ...]
    keywords: tuple[tuple[str, str], ...] = ()
    optional: bool = False


TRAINING = "training"
EVALUATION = "eval.k"  # the k = 5000 importance-sampled test NLL, bound_ks and val/bound
ACTIVE_UNITS = "active units"
AIS_Q, AIS_PRIOR = "eval.ais", "eval.ais.init=prior"
BDMC_Q, BDMC_PRIOR = "eval.bdmc", "eval.bdmc with eval.ais.init=prior"
SAMPLE_GRID = "the sample grid"

_ANNEAL = ("log_joint", "input_dim")
TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            TRAINING,
            ("log_weights", "generative_parameters", "inference_parameters"),
            (("log_weights", "detach_q"),),
        ),
        Tool(EVALUATION, ("log_weights",), (("log_weights", "generator"),)),
        Tool(ACTIVE_UNITS, ("encoder_means",)),
        Tool(AIS_Q, (*_ANNEAL, "sample_q", "log_q")),
        Tool(AIS_PRIOR, (*_ANNEAL, "sample_prior", "log_prior")),
        Tool(BDMC_Q, (*_ANNEAL, "sample_joint", "sample_prior", "sample_q", "log_q")),
        Tool(BDMC_PRIOR, (*_ANNEAL, "sample_joint", "sample_prior", "log_prior")),
        Tool(SAMPLE_GRID, ("sample",), optional=True),
    )
}
OBJECTIVE_NEEDS = ("name", "k", "num_samples", "bound", "on_train_epoch_start")


def evaluation_tools(eval_cfg: Any) -> list[str]:
    """The tools an ``eval`` config node will use: the IS estimate and active units always,
    AIS and BDMC when they run (with the density their ``init`` anneals from)."""
    tools = [EVALUATION, ACTIVE_UNITS]
    ais = eval_cfg.get("ais") or {}
    prior = ais.get("init", "q") == "prior"
    if ais.get("steps", 0):
        tools.append(AIS_PRIOR if prior else AIS_Q)
    if (eval_cfg.get("bdmc") or {}).get("images", 0):
        tools.append(BDMC_PRIOR if prior else BDMC_Q)
    return tools


def _takes(method: Any, keyword: str) -> bool:
    """Whether ``method`` can be called with ``keyword=...``."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume it does
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == keyword and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params
    )


def missing(model: Any, tool: str) -> str | None:
    """The first method (or ``method(keyword=)``) ``tool`` needs that ``model`` lacks."""
    spec = TOOLS[tool]
    for name in spec.methods:
        if not hasattr(model, name):
            return name
    for name, keyword in spec.keywords:
        if not _takes(getattr(model, name), keyword):
            return f"{name}(..., {keyword}=...)"
    return None


def _name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_model(model: Any, tools: Iterable[str]) -> None:
    """A one-line `UserError` for the first required ``tools`` method ``model`` lacks."""
    for tool in tools:
        if TOOLS[tool].optional:
            continue
        lack = missing(model, tool)
        if lack is not None:
            raise UserError(f"model {_name(model)} has no {lack}, which {tool} needs; see {GUIDE}")


def optional_missing(model: Any, tool: str = SAMPLE_GRID) -> str | None:
    """The one warning line for an optional ``tool`` the model cannot serve, else None."""
    lack = missing(model, tool)
    if lack is None:
        return None
    return f"model {_name(model)} has no {lack}, so {tool} is skipped; see {GUIDE}"


def check_objective(objective: Any) -> None:
    """A one-line `UserError` if ``objective`` is not a training objective."""
    lack = next((n for n in OBJECTIVE_NEEDS if not hasattr(objective, n)), None)
    if lack is None and not callable(objective):
        lack = "__call__(model, x)"
    if lack is not None:
        raise UserError(
            f"objective {_name(objective)} has no {lack}, which training needs (derive it "
            f"from iwae.objectives.Objective); see {GUIDE}"
        )
