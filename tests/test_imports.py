"""Importing the package registers nothing: resolvers are registered by whoever composes a
config. (Which layer may import what is held by import-linter's contracts in pyproject.toml.)"""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_registers_no_resolver() -> None:
    code = (
        "import iwae.model\n"
        "from omegaconf import OmegaConf\n"
        "print(OmegaConf.has_resolver('iwae.sweep_group'))\n"
        "from iwae.launch.resolvers import register_resolvers\n"
        "register_resolvers(); register_resolvers()\n"  # twice: the second must not fail
        "print(OmegaConf.has_resolver('iwae.sweep_group'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
