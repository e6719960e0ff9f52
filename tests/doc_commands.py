"""The shell commands of the docs, run as written.

A block is marked `<!-- tested: NAME -->` on the line before its ```sh fence; `block` returns it
(dedented, as a list item's block is indented) and `run` runs it with bash, stopping at the first
failing command. Only what cannot exist on a test machine is changed, and only by `run`'s
`replacements`: the system directories /etc/ha-voice (and /var/lib/ha-voice) become temporary
ones, and the service user `ha-voice` (`--owner ha-voice`, `sudo -u ha-voice`, `sudo`) the user
running the tests.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Sequence
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


def machine_replacements(root: Path) -> dict[str, str]:
    """A whole machine's system paths under `root`: /etc/ha-voice and /var/lib/ha-voice, the
    service user and `sudo` (the tests already run as the user the commands run as)."""
    return {
        **system_replacements(root / "etc" / "ha-voice"),
        "/var/lib/ha-voice": str(root / "var" / "lib" / "ha-voice"),
        "sudo -u ha-voice ": "",
        "sudo ": "",
    }


def _prepared(script: str, replacements: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    for old, new in (replacements or {}).items():
        script = script.replace(old, new)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return script, env


def run(
    script: str,
    cwd: Path,
    replacements: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run `script` with bash -e in `cwd`, `ha-voice` on the PATH, after `prefix` (a network
    namespace's `ip netns exec NAME`); its output, checked."""
    script, env = _prepared(script, replacements)
    result = subprocess.run(
        [*prefix, "bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result


def spawn(
    script: str,
    cwd: Path,
    log: Path,
    replacements: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start `script` as `run` would, for a command that runs until stopped (a daemon), its
    output to `log`; the caller stops it. `exec` makes the command itself the process."""
    script, env = _prepared(script, replacements)
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefix, "bash", "-e", "-c", f"exec {script.strip()}"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
