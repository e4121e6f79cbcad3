"""Session setup only; what tests share lives in tests/helpers.py."""

from __future__ import annotations

import os

# W&B costs nothing when disabled; tests that check the W&B logger set the mode themselves.
os.environ.setdefault("WANDB_MODE", "disabled")
