"""This node's load for the cluster: sampled on a thread of its own, read by the core at once.

Invariants:
- The cluster core never waits for a sample: `LoadSampler.latest` is one immutable `Load`,
  replaced whole by the sampler thread (one attribute store), read by the core (one load).
- CPU utilisation comes from psutil (`cpu_percent(interval=None)`: the share since the previous
  sample, no sleeping); speech jobs from the speech service's `status()` (cheap, thread-safe);
  GPU utilisation and memory from `tegrastats` on a Jetson, read line by line by a thread of
  its own. Where there is no `tegrastats` (or it dies), GPU is reported unknown (None), never 0.
- A sampler that fails to sample keeps publishing what it can: an exception in `status()`
  reports the node not ready for speech, with the CPU still measured.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import Final

import psutil

from ha_voice import scheduling
from ha_voice.cluster.protocol import Load
from ha_voice.voice.speech import SpeechStatus

__all__ = ["SAMPLE_INTERVAL_S", "LoadSampler", "TegraStats", "parse_tegrastats"]

log = logging.getLogger(__name__)

# A fifth of a load report's interval (runner.LOAD_REPORT_S): a report is never more than this
# behind the queue it describes; psutil's sample costs ~50 us.
SAMPLE_INTERVAL_S: Final = 0.1
# tegrastats prints one line per interval: "RAM 2885/7620MB ... GR3D_FREQ 35%@[305] ..." (JetPack
# 5/6; JetPack 4 prints "GR3D_FREQ 35%@305"). On Jetsons the GPU shares RAM with the CPU, so the
# RAM in use is what the GPU's models can have taken.
_GR3D: Final = re.compile(r"\bGR3D_FREQ (\d{1,3})%")
_RAM: Final = re.compile(r"\bRAM (\d{1,9})/\d{1,9}MB")
_TEGRASTATS_INTERVAL_MS: Final = 500


def parse_tegrastats(line: str) -> tuple[float | None, int | None]:
    """(GPU utilisation in [0, 1], memory in use in MiB) from one tegrastats line; None where
    the line does not say."""
    gpu = _GR3D.search(line)
    ram = _RAM.search(line)
    utilisation = min(int(gpu.group(1)), 100) / 100 if gpu else None
    return utilisation, int(ram.group(1)) if ram else None


class TegraStats:
    """The latest of `tegrastats`' lines, read by a thread of its own (Jetsons only)."""

    def __init__(self, command: str) -> None:
        """`command`: the tegrastats executable."""
        self.latest: tuple[float | None, int | None] = (None, None)
        self._process = subprocess.Popen(
            [command, "--interval", str(_TEGRASTATS_INTERVAL_MS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            # The node's real-time priority is for its heartbeats, not for tegrastats.
            preexec_fn=scheduling.normal_in_child,  # noqa: PLW1509  # one system call, no lock
        )
        self._thread = threading.Thread(target=self._read, name="ha-voice-tegrastats", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.latest = parse_tegrastats(line)
        self.latest = (None, None)  # it ended: unknown from now on, not its last word
        log.warning("tegrastats ended (exit %s): GPU load unknown", self._process.poll())

    def stop(self) -> None:
        """End tegrastats and its reader."""
        with contextlib.suppress(ProcessLookupError):
            self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(1.0)
        self._thread.join(1.0)


class LoadSampler:
    """Samples this node's load every `interval_s` on a thread; `latest` (or a call) reads it."""

    def __init__(
        self,
        status: Callable[[], SpeechStatus] | None,
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
        tegrastats: str | None = None,
    ) -> None:
        """`status`: the local speech service's (None: this node has no speech);
        `tegrastats`: its executable, found on PATH if None; seconds between samples."""
        self._status = status
        self._interval_s = interval_s
        self._tegrastats_command = tegrastats or shutil.which("tegrastats")
        self._tegrastats: TegraStats | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._status_failed = False  # logged once
        psutil.cpu_percent(interval=None)  # the first call only starts the count
        self.latest = self.sample()

    def __call__(self) -> Load:
        """The latest sample (what the core reads: never blocks)."""
        return self.latest

    def start(self) -> None:
        """Start sampling (and tegrastats, where there is one)."""
        if self._tegrastats_command is not None:
            try:
                self._tegrastats = TegraStats(self._tegrastats_command)
            except OSError as exc:
                log.warning("cannot run %s (%s): GPU load unknown", self._tegrastats_command, exc)
        self._thread = threading.Thread(target=self._run, name="ha-voice-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; blocks up to a second."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._tegrastats is not None:
            self._tegrastats.stop()

    def sample(self) -> Load:
        """This node's load now."""
        cpu = psutil.cpu_percent(interval=None) / 100
        gpu, memory = self._tegrastats.latest if self._tegrastats else (None, None)
        status = self._speech_status()
        if status is None:
            return Load(cpu=cpu, gpu=gpu, gpu_memory_mb=memory)
        return Load(
            ready=status.ready,
            workers=status.workers,
            running=status.running,
            queued=status.queued,
            cpu=cpu,
            gpu=gpu,
            gpu_memory_mb=memory,
        )

    def _speech_status(self) -> SpeechStatus | None:
        if self._status is None:
            return None
        try:
            return self._status()
        except Exception:
            if not self._status_failed:
                log.exception("the speech service's status failed: reporting speech not ready")
            self._status_failed = True
            return None

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.latest = self.sample()
