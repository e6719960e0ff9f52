"""The shell commands of the docs, run as written.

A block is marked `<!-- tested: NAME -->` on the line before its ```sh fence; `block` returns it
(dedented, as a list item's block is indented) and `run` runs it with bash, stopping at the first
failing command. Only what cannot exist on a test machine is changed, and only by `run`'s
`replacements`: the system directory /etc/ha-voice becomes a temporary one, and the service
user `ha-voice` (`--owner ha-voice`) the user running the tests.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"
_MARKED = re.compile(r"^([ \t]*)<!-- tested: ([a-z0-9-]+) -->\n\1```sh\n(.*?)^\1```$", re.M | re.S)


def blocks(doc: Path = OPERATIONS) -> dict[str, str]:
    """Every marked block of `doc`, by name."""
    text = doc.read_text(encoding="utf-8")
    return {m[2]: textwrap.dedent(m[3]) for m in _MARKED.finditer(text)}


def block(name: str, doc: Path = OPERATIONS) -> str:
    return blocks(doc)[name]


def system_replacements(etc: Path) -> dict[str, str]:
    """/etc/ha-voice -> `etc`, the service user -> this user (see the module docstring)."""
    return {"/etc/ha-voice": str(etc), "--owner ha-voice": f"--owner {getpass.getuser()}"}


def run(
    script: str, cwd: Path, replacements: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `script` with bash -e in `cwd`, `ha-voice` on the PATH; its output, checked."""
    for old, new in (replacements or {}).items():
        script = script.replace(old, new)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result
