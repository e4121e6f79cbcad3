# Registers the ${iwae.*} resolvers the configs use, for whoever composes them (train.py,
# tests, notebooks).
from iwae import launch as _launch  # noqa: F401
