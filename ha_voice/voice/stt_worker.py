"""One speech worker process: loads the model, warms it up, and answers jobs over a pipe.

Runs in a process of its own, started by the speech service (voice/stt.py) with the "spawn"
method: the daemon has threads, and a forked copy of it could hold their locks for ever.

The pipe protocol (each message one pickled tuple):
- worker → service, once: `("ready", LoadedInfo)` after the model loaded and the recogniser of
  the configured language answered its warm-up, or `("failed", why)` and the process exits.
- service → worker: `Job` per job, `None` to stop; worker → service: `("ok", result)` with a
  Recognition or Transcription, or `("error", why)`; one answer per job, in order.
- End of file on the pipe (the daemon died) ends the worker.

Invariants:
- The worker runs at a lower CPU priority than the daemon (`WORKER_NICENESS`), so that the
  cluster core and the API win the CPU when every core is busy transcribing.
- A job's failure is answered, never raised: only a crash of the process (native code, the
  out-of-memory killer, SIGKILL) ends it while the daemon runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Literal

from ha_voice import scheduling
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.speech import Audio, Recognition, Transcription

__all__ = ["WORKER_NICENESS", "Job", "LoadedInfo", "ModelOptions", "worker_main"]

# Added to the daemon's niceness: a nice-10 process gets about a tenth of the CPU time of a
# nice-0 one that wants it (CFS weights 1024 vs 110), so heartbeats are sent on time.
WORKER_NICENESS: Final = 10
_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
# The recogniser module the workers use unless told otherwise (tests may give a fake).
DEFAULT_BACKEND: Final = "ha_voice.voice.recogniser"


@dataclass(frozen=True)
class ModelOptions:
    """What a worker loads: faster-whisper's model arguments, and the language to warm up."""

    model: str  # size name, or a CTranslate2 model directory
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0
    download_root: str | None = None
    local_files_only: bool = False
    language: str = "nl"  # the recogniser made and warmed up at start; others on first use
    backend: str = DEFAULT_BACKEND  # module with ModelSettings, load_model, Recogniser, transcribe


@dataclass(frozen=True)
class LoadedInfo:
    """What a worker has loaded, as it reports it."""

    model: str
    device: str
    compute_type: str
    pid: int


@dataclass(frozen=True)
class Job:
    """One unit of speech work as sent to a worker."""

    kind: Literal["recognise", "transcribe"]
    audio: Audio  # float32 mono at 16 kHz
    language: str | None
    prompt: str | None = None


def worker_main(conn: Connection, options: ModelOptions) -> None:
    """The worker process's body: load, report, then answer jobs until `None` or end of file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which stops us
    _die_with_the_daemon()
    scheduling.leave_realtime()  # the daemon's SCHED_RR is for its heartbeats, not for us
    with contextlib.suppress(OSError):  # a priority we may not change is no reason to be deaf
        os.nice(WORKER_NICENESS)
    try:
        _check_directory(options.model)
        backend = importlib.import_module(options.backend)
        model = backend.load_model(_settings(backend, options))
        recognisers = {options.language: _recogniser(backend, model, options.language)}
        recognisers[options.language].warm_up()
    except Exception as exc:  # any load failure is reported, whatever raised it
        conn.send(("failed", _why(exc)))
        return
    conn.send(("ready", _loaded_info(model, options)))
    _serve(conn, backend, model, recognisers)


def _die_with_the_daemon() -> None:
    """Be killed when the daemon's thread that started us ends, however it ends (Linux's
    PR_SET_PDEATHSIG): a SIGKILLed daemon leaves no worker computing a job nobody awaits."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the call took effect
        os._exit(1)


def _serve(conn: Connection, backend: Any, model: Any, recognisers: dict[str, Any]) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(("ok", _run(job, backend, model, recognisers)))
        except (EOFError, OSError, BrokenPipeError):
            return
        except Exception as exc:  # the job failed; the worker carries on
            conn.send(("error", _why(exc)))


def _run(
    job: Job, backend: Any, model: Any, recognisers: dict[str, Any]
) -> Recognition | Transcription:
    if job.kind == "transcribe":
        result: Transcription = backend.transcribe(model, job.audio, job.language, job.prompt)
        return result
    language = job.language or "nl"
    if language not in recognisers:
        recognisers[language] = _recogniser(backend, model, language)
    recognition: Recognition = recognisers[language].recognise(job.audio)
    return recognition


def _check_directory(model: str) -> None:
    """A model given as a path must be a directory (faster-whisper would take it for a
    Hugging Face repo id and answer with a puzzle about repo names)."""
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"no model directory at {model}")


def _settings(backend: Any, options: ModelOptions) -> Any:
    return backend.ModelSettings(
        model=options.model,
        device=options.device,
        compute_type=options.compute_type,
        cpu_threads=options.cpu_threads,
        download_root=options.download_root,
        local_files_only=options.local_files_only,
    )


def _recogniser(backend: Any, model: Any, language: str) -> Any:
    return backend.Recogniser(model, Vocabulary.load(language))


def _loaded_info(model: Any, options: ModelOptions) -> LoadedInfo:
    return LoadedInfo(
        model=str(getattr(model, "name", options.model)),
        device=str(getattr(model, "device", options.device)),
        compute_type=str(getattr(model, "compute_type", options.compute_type)),
        pid=os.getpid(),
    )


def _why(exc: BaseException) -> str:
    """The exception in one line of at most 300 characters (a path, a download error)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
