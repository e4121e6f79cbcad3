"""Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015).

The modules at this level are the paper's mathematics and need only torch: the model
(`iwae.model`), the bounds and objectives (`iwae.bounds`, `iwae.objective_base`,
`iwae.objectives`), the evaluation (`iwae.evaluation`, `iwae.ais`), schedules, diagnostics and
errors. Above them, each a package: `iwae.training` (the Lightning loop), `iwae.launch` (from
a command line to a run), `iwae.fused` and `iwae.reports`; import-linter's contracts in
pyproject.toml hold the layers. The Python API, `iwae.api` (``iwae.load``, ``iwae.train``),
sits on top of them and is loaded on first use. Importing the package does nothing else:
the ``${iwae.*}`` config resolvers are registered where configs are composed
(`iwae.launch.resolvers.register_resolvers`).
"""

from typing import Any

# The Python API (`iwae.api`): ``iwae.load(run_dir)`` and ``iwae.train([...])``. Loaded on first
# use, so that ``import iwae`` (and train.py's pre-check, which imports iwae.errors) stays
# free of torch and Lightning.
__all__ = ["Run", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from iwae import api

        return getattr(api, name)
    raise AttributeError(f"module 'iwae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
