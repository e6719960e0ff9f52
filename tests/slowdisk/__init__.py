"""Build and use `slowfsync.c`: a process whose fsyncs are slow or frozen (see the C file)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

__all__ = ["prefix", "shim"]

_SOURCE = Path(__file__).with_name("slowfsync.c")


@cache
def shim() -> Path:
    """The compiled shared object (built once per test run, with the C compiler `cc`)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler: apt-get install gcc (tests/slowdisk needs one)")
    out = Path(tempfile.mkdtemp(prefix="ha-voice-slowdisk-")) / "slowfsync.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(_SOURCE), "-ldl"], check=True
    )
    return out


def prefix(delay_ms: int = 0, gate: Path | None = None) -> list[str]:
    """A command prefix (`env ...`) that runs a process on the slow disk."""
    settings = [f"LD_PRELOAD={shim()}", f"SLOW_FSYNC_MS={delay_ms}"]
    if gate is not None:
        settings.append(f"SLOW_FSYNC_GATE={gate}")
    return ["env", *settings]
