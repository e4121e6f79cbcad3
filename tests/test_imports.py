"""The math core and the file readers import nothing heavy: no Hydra, W&B or Lightning, and
importing the package registers nothing (issue 14)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("hydra", "omegaconf", "wandb", "pytorch_lightning", "lightning_fabric")


@pytest.mark.parametrize("module", ["iwae", "iwae.model", "iwae.objectives", "datamodules.formats"])
def test_core_imports_no_framework(module: str) -> None:
    code = f"import sys, {module}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


def test_importing_the_package_registers_no_resolver() -> None:
    code = (
        "import iwae.model\n"
        "from omegaconf import OmegaConf\n"
        "print(OmegaConf.has_resolver('iwae.sweep_group'))\n"
        "from iwae.resolvers import register_resolvers\n"
        "register_resolvers(); register_resolvers()\n"  # twice: the second must not fail
        "print(OmegaConf.has_resolver('iwae.sweep_group'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
