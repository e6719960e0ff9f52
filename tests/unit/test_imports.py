"""Every module imports on its own in a fresh interpreter: no import cycles, no hidden order.

Modelled on python-zeroconf's tests/test_circular_imports.py.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ha_voice

ROOT = Path(__file__).resolve().parents[2]

# Module name -> the importable package it needs from an optional extra; skipped without it.
OPTIONAL: dict[str, str] = {}

MODULES = sorted(
    ["ha_voice"]
    + [module.name for module in pkgutil.walk_packages(ha_voice.__path__, prefix="ha_voice.")]
)


def test_the_walk_finds_the_package() -> None:
    assert {"ha_voice.errors", "ha_voice.cluster", "ha_voice.cluster.protocol"} <= set(MODULES)
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "ha_voice").rglob("*.py")
    }
    assert set(MODULES) == files


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_a_fresh_interpreter(module: str) -> None:
    needed = OPTIONAL.get(module)
    if needed is not None and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{module} needs the optional package {needed}")
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
