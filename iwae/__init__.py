"""Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015).

The modules at this level are the paper's mathematics and need only torch: the model
(`iwae.model`), the bounds and objectives (`iwae.bounds`, `iwae.objective_base`,
`iwae.objectives`), the evaluation (`iwae.evaluation`, `iwae.ais`), schedules, diagnostics and
errors. Above them, each a package: `iwae.training` (the Lightning loop), `iwae.launch` (from
a command line to a run), `iwae.fused` and `iwae.reports`; import-linter's contracts in
pyproject.toml hold the layers. Importing the package does nothing else: the ``${iwae.*}``
config resolvers are registered where configs are composed
(`iwae.launch.resolvers.register_resolvers`).
"""
