"""The sans-IO core imports nothing that could read a clock or do I/O (STYLE.md rules 1 and 3)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = (
    "election",
    "events",
    "protocol",
    "membership",
    "timers",
    "replication",
    "followers",
    "durability",
    "view",
)
CORE_MODULES = tuple(f"ha_voice.cluster.{name}" for name in CORE)

# Must not be loaded as a side effect of importing the core, even through the standard library.
NOT_LOADED = frozenset(
    {
        "asyncio",
        "socket",
        "sqlite3",
        "logging",
        "threading",
        "selectors",
        "subprocess",
        "select",
        "ssl",
        "http",
        "urllib",
        "time",
    }
)
# Must not be imported by a core file itself: `os` and `datetime` too, which the standard
# library may load anyway but which the core has no business calling.
NOT_IMPORTED = frozenset(
    {
        "asyncio",
        "socket",
        "time",
        "sqlite3",
        "logging",
        "threading",
        "os",
        "subprocess",
        "select",
        "selectors",
        "datetime",
    }
)

# `-S` skips site-packages and their start-up hooks (an editable install's finder loads
# urllib); `time` is loaded by the interpreter itself. Forgetting every watched module first
# makes a later import load it again, so "newly imported" misses none of them.
PROBE = """
import json, sys
watched = set(json.loads(sys.argv[1]))
for name in [name for name in sys.modules if name.partition(".")[0] in watched]:
    del sys.modules[name]
before = set(sys.modules)
for name in sys.argv[2:]:
    __import__(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def newly_imported(*modules: str) -> set[str]:
    """Every module a fresh interpreter loads while importing `modules` from this checkout."""
    watched = json.dumps(sorted(NOT_LOADED))
    result = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, watched, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def top_level(names: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


def imported_roots(source: str) -> set[str]:
    """The top-level package of every absolute import anywhere in `source`."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.partition(".")[0])
    return roots


def test_importing_the_core_loads_no_io_or_clock_module() -> None:
    loaded = newly_imported(*CORE_MODULES)
    assert set(CORE_MODULES) <= loaded
    assert top_level(loaded) & NOT_LOADED == set()


def test_the_probe_sees_io_modules_and_time() -> None:
    # Without this the test above could pass because the probe is blind.
    loaded = top_level(newly_imported("time", "logging", "urllib.parse"))
    assert {"time", "logging", "urllib"} <= loaded


@pytest.mark.parametrize("name", CORE)
def test_core_file_imports_no_io_or_clock_module(name: str) -> None:
    path = ROOT / "ha_voice" / "cluster" / f"{name}.py"
    assert imported_roots(path.read_text(encoding="utf-8")) & NOT_IMPORTED == set()


def test_import_scan_finds_every_form_of_import() -> None:
    source = (
        "import time\n"
        "import os.path as p\n"
        "from asyncio import sleep\n"
        "from . import sibling\n"
        "def later():\n"
        "    import socket\n"
        "    from datetime import datetime\n"
    )
    assert imported_roots(source) == {"time", "os", "asyncio", "socket", "datetime"}
