"""Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015).

Importing the package does nothing else: the math core (`iwae.model`, `iwae.objectives`)
needs only torch. The ``${iwae.*}`` config resolvers are registered where configs are composed
(`iwae.launch.resolvers.register_resolvers`).
"""
