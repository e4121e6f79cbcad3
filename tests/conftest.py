"""Session setup. What tests share (the composed config, tiny runs, train.py in a
subprocess) lives in tests/helpers.py; ROOT, CONF_DIR and compose_config are re-exported here
for modules that still import them from conftest."""

from __future__ import annotations

import os

from tests.helpers import CONF_DIR, ROOT, compose_config

__all__ = ["CONF_DIR", "ROOT", "compose_config"]

# W&B costs nothing when disabled; tests that check the W&B logger set the mode themselves.
os.environ.setdefault("WANDB_MODE", "disabled")
