"""This node's speech service: warm models in worker processes, one priority queue, status.

`SpeechService` implements the `Speech` seam (voice/speech.py) for this node alone; placement
over the cluster wraps it (voice/placement.py).

Why processes: the heartbeat must never wait. CTranslate2 releases the GIL while it computes,
but the Python-side feature and scoring code does not, and a crash in native code must not take
the daemon down. Each of `workers` processes (voice/stt_worker.py, "spawn": the daemon has
threads, so it is never forked) loads the model, warms it up and answers one job at a time, at
a lower CPU priority than the daemon. One thread per worker in the daemon feeds it jobs and
waits on its pipe; the event loop only awaits futures.

Invariants:
- Every "command" job is handed to a worker before any "batch" job; among equals, first come
  first served. With two workers or more, batch jobs hold at most all but one of them, so a
  command never waits for batch work under way (with one worker it waits for the job running).
  At most `max_queue` jobs wait; one more is refused at once (SpeechUnavailable, 503 with
  Retry-After), as is any job while no worker is ready.
- Every job is answered by its deadline (`job_timeout_s` after submission): with its result,
  or SpeechUnavailable. A worker still busy at the deadline is killed and started again.
- A worker that dies is started again after a bounded backoff; its job is retried once (by the
  next worker to be free) or, if it already was, fails with SpeechUnavailable.
- `status()` never blocks on a worker: it reads counters kept under one short lock, from any
  thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

from ha_voice import clock
from ha_voice.voice.speech import (
    Audio,
    Priority,
    Recognition,
    SpeechStatus,
    SpeechUnavailable,
    Transcription,
)
from ha_voice.voice.stt_worker import Job, LoadedInfo, ModelOptions, worker_main

if TYPE_CHECKING:
    from ha_voice.config import Config
    from ha_voice.metrics import Metrics

__all__ = ["ServiceOptions", "SpeechService"]

log = logging.getLogger(__name__)

_RANK: Final[dict[Priority, int]] = {"command": 0, "batch": 1}
# How often an idle worker's thread looks whether its process still lives, and how long a
# worker may take to exit when asked before it is killed.
_IDLE_CHECK_S: Final = 0.5
_EXIT_GRACE_S: Final = 2.0
# A worker whose pipe ended is given this long to be reaped, so its death is named (`_exit_text`).
_REAP_WAIT_S: Final = 0.5
# Backoff before starting a worker again: doubling from the first to the last, reset once a
# worker has answered a job (a crash loop costs one model load per minute at most). A model that
# did not load (a wrong path, no internet) is tried again from the slower start: it rarely
# heals by itself, and each try imports faster-whisper anew.
_RESTART_FIRST_S: Final = 0.5
_LOAD_RETRY_FIRST_S: Final = 10.0
_RESTART_MAX_S: Final = 60.0
_LOAD_HINT: Final = (
    "fix: whisper_model names a size (downloaded unless whisper_local_files_only, into "
    "whisper_download_root) or a CTranslate2 model directory; see stt_device and "
    "stt_compute_type"
)


@dataclass(frozen=True)
class ServiceOptions:
    """How many workers, how much may wait, how long a job may take."""

    model: ModelOptions
    workers: int = 1
    max_queue: int = 16
    job_timeout_s: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> ServiceOptions:
        """The speech keys of `config` (stt_*, whisper_*, language)."""
        root = config.whisper_download_root
        return cls(
            ModelOptions(
                model=config.whisper_model,
                device=config.stt_device,
                compute_type=config.stt_compute_type,
                cpu_threads=config.stt_cpu_threads,
                download_root=None if root is None else str(root),
                local_files_only=config.whisper_local_files_only,
                language=config.language,
            ),
            workers=config.stt_workers,
            max_queue=config.stt_max_queue,
            job_timeout_s=config.stt_job_timeout_s,
        )


@dataclass
class _Pending:
    """A job with what the service needs to answer it."""

    job: Job
    priority: Priority
    deadline: float  # monotonic seconds
    submitted: float
    future: concurrent.futures.Future[Recognition | Transcription]
    seq: int  # order of submission, first served first among equal priorities
    retried: bool = False
    started: bool = False


@dataclass
class _Slot:
    """One worker as the service sees it."""

    index: int
    state: Literal["starting", "ready", "failed", "stopped"] = "starting"
    loaded: LoadedInfo | None = None
    failure: str = ""
    process: BaseProcess | None = None
    conn: Connection | None = None
    job: _Pending | None = None
    answered: bool = False  # this process answered a job (its restart backoff starts anew)


@dataclass
class _Counters:
    restarts: int = 0
    last_restart: str = ""
    seq: itertools.count[int] = field(default_factory=itertools.count)


class _WorkerDied(Exception):
    """The worker process ended (crash, kill) while the service still needed it."""


class SpeechService:
    """Speech work on this node, in `options.workers` worker processes (module docstring)."""

    def __init__(self, options: ServiceOptions, node_id: str, metrics: Metrics | None = None):
        self.options = options
        self.node_id = node_id
        self._metrics = metrics
        self._lock = threading.Condition()
        self._queue: list[tuple[int, int, _Pending]] = []
        self._slots = [_Slot(i) for i in range(options.workers)]
        self._counters = _Counters()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._context = multiprocessing.get_context("spawn")
        if metrics is not None:
            metrics.attach_speech(self.status)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker in the background; returns at once (models load meanwhile)."""
        for slot in self._slots:
            thread = threading.Thread(
                target=self._run_slot, args=(slot,), name=f"stt-worker-{slot.index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Refuse new jobs, fail waiting ones, stop every worker within `timeout_s` seconds."""
        self._stopping.set()
        with self._lock:
            waiting, self._queue = self._queue, []
            self._lock.notify_all()
        for _, _, pending in waiting:
            _fail(pending, "this node's speech service is shutting down")
        deadline = clock.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - clock.monotonic()))

    async def async_close(self, timeout_s: float = 5.0) -> None:
        """`close` off the event loop."""
        await asyncio.to_thread(self.close, timeout_s)

    # --- the Speech seam ---------------------------------------------------------------------

    def status(self) -> SpeechStatus:
        """Configured and loaded model, readiness with its reason, workers, running and queued."""
        with self._lock:
            ready = [s for s in self._slots if s.state == "ready" and s.loaded is not None]
            loaded = ready[0].loaded if ready else None
            return SpeechStatus(
                configured=self.options.model.model,
                ready=bool(ready) and not self._stopping.is_set(),
                reason="" if ready else self._not_ready_reason(),
                model=None if loaded is None else loaded.model,
                device=None if loaded is None else loaded.device,
                compute_type=None if loaded is None else loaded.compute_type,
                workers=len(ready),
                running=sum(s.job is not None for s in self._slots),
                queued=len(self._queue),
                restarts=self._counters.restarts,
                last_restart=self._counters.last_restart,
            )

    async def async_recognise(
        self, audio: Audio, language: str, *, priority: Priority = "command"
    ) -> Recognition:
        """Recognise `audio` against `language`'s vocabulary (see `Speech.async_recognise`)."""
        result = await self._async_submit(Job("recognise", _samples(audio), language), priority)
        assert isinstance(result, Recognition)
        return result

    async def async_transcribe(
        self, audio: Audio, language: str | None, prompt: str | None = None
    ) -> Transcription:
        """Free transcription at batch priority (see `Speech.async_transcribe`)."""
        job = Job("transcribe", _samples(audio), language, prompt)
        result = await self._async_submit(job, "batch")
        assert isinstance(result, Transcription)
        return result

    def worker_pids(self) -> tuple[int, ...]:
        """The process ids of the workers running now (for operators and tests)."""
        with self._lock:
            return tuple(
                s.process.pid
                for s in self._slots
                if s.process is not None and s.process.pid is not None and s.state != "stopped"
            )

    # --- submission (event loop) -------------------------------------------------------------

    async def _async_submit(self, job: Job, priority: Priority) -> Recognition | Transcription:
        pending = self.submit(job, priority)
        # The worker threads answer by the deadline; the margin only guards against a bug.
        timeout_s = max(0.0, pending.deadline - clock.monotonic()) + _EXIT_GRACE_S
        try:
            return await asyncio.wait_for(asyncio.wrap_future(pending.future), timeout_s)
        except asyncio.TimeoutError:
            raise SpeechUnavailable("the speech job got no answer in time") from None

    def submit(self, job: Job, priority: Priority) -> _Pending:
        """Queue `job`; raises SpeechUnavailable when no worker is ready or the queue is full."""
        now = clock.monotonic()
        with self._lock:
            if self._stopping.is_set():
                raise SpeechUnavailable("this node's speech service is shutting down")
            if not any(s.state == "ready" for s in self._slots):
                reason = self._not_ready_reason()
                raise SpeechUnavailable(f"speech not ready: {reason}", retry_after_s=5.0)
            if len(self._queue) >= self.options.max_queue and not self._evict_batch(priority):
                raise SpeechUnavailable(
                    f"speech queue full ({self.options.max_queue} jobs waiting)",
                    retry_after_s=self._retry_after_s(),
                )
            deadline = now + self.options.job_timeout_s
            future: concurrent.futures.Future[Recognition | Transcription]
            future = concurrent.futures.Future()
            pending = _Pending(job, priority, deadline, now, future, next(self._counters.seq))
            self._push(pending)
        return pending

    def _evict_batch(self, priority: Priority) -> bool:
        """Make room for a command by failing the newest batch job; whether there was one.
        A full queue of batch work never keeps a command out."""
        if priority != "command":
            return False
        batch = [entry for entry in self._queue if entry[2].priority == "batch"]
        if not batch:
            return False
        newest = max(batch, key=lambda entry: entry[1])
        self._queue.remove(newest)
        heapq.heapify(self._queue)
        _fail(newest[2], "pushed out by a command: the speech queue was full", retry_after_s=2.0)
        return True

    def _push(self, pending: _Pending) -> None:
        heapq.heappush(self._queue, (_RANK[pending.priority], pending.seq, pending))
        self._lock.notify()

    def _retry_after_s(self) -> float:
        # Roughly when a place frees up: one job's time per worker round, at least a second.
        return max(1.0, len(self._queue) / max(1, len(self._slots)) * 0.5)

    def _not_ready_reason(self) -> str:
        if self._stopping.is_set():
            return "shutting down"
        failures = [s.failure for s in self._slots if s.failure]
        if failures:
            return f"load failed: {failures[0]}"
        if self._counters.restarts:
            return f"restarting a worker ({self._counters.last_restart})"
        return f"loading {self.options.model.model}"

    # --- one thread per worker ---------------------------------------------------------------

    def _run_slot(self, slot: _Slot) -> None:
        """Start the worker, feed it jobs; start it again when it dies, until close()."""
        backoff_s = _RESTART_FIRST_S
        while not self._stopping.is_set():
            try:
                self._start_worker(slot)
                self._serve(slot)
            except _WorkerDied as exc:
                self._worker_died(slot, str(exc))
            except _Stopped:
                backoff_s = max(backoff_s, _LOAD_RETRY_FIRST_S)  # or close(): then no wait
            except Exception as exc:  # never leave the slot silently dead: say why, try again
                log.exception("speech worker %d failed", slot.index)
                if slot.state == "ready":
                    self._worker_died(slot, f"failed: {exc}")
                else:
                    self._load_failed(slot, f"could not start a worker process: {exc}")
                    backoff_s = max(backoff_s, _LOAD_RETRY_FIRST_S)
            finally:
                self._stop_worker(slot)
            if slot.answered:
                backoff_s = _RESTART_FIRST_S
            if self._stopping.wait(backoff_s):
                break
            backoff_s = min(2 * backoff_s, _RESTART_MAX_S)
        with self._lock:
            slot.state = "stopped"

    def _start_worker(self, slot: _Slot) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(child, self.options.model),
            name=f"ha-voice-stt-{slot.index}",
            daemon=True,
        )
        with self._lock:
            slot.state, slot.process, slot.conn, slot.answered = "starting", process, parent, False
        try:
            process.start()
        finally:
            child.close()
        message = self._receive(slot, deadline=None)
        with self._lock:
            if message[0] == "ready" and isinstance(message[1], LoadedInfo):
                slot.state, slot.loaded, slot.failure = "ready", message[1], ""
                log.info("speech worker %d ready: %s", slot.index, message[1])
                return
        self._load_failed(slot, f"{message[1]}; {_LOAD_HINT}")
        raise _Stopped

    def _load_failed(self, slot: _Slot, why: str) -> None:
        with self._lock:
            slot.state, slot.failure = "failed", why
        log.warning("speech worker %d: load failed: %s", slot.index, why)
        self._fail_queue_if_none_ready()

    def _serve(self, slot: _Slot) -> None:
        """Answer jobs until the worker dies (_WorkerDied) or close()."""
        while True:
            pending = self._take(slot)
            if pending is None:
                return
            try:
                self._work(slot, pending)
                slot.answered = True
            except (_WorkerDied, _Stopped):
                raise  # the job was retried or failed already
            except Exception as exc:
                self._retry_or_fail(pending, f"its worker failed: {exc}")
                raise
            finally:
                with self._lock:
                    slot.job = None
                    self._lock.notify_all()  # a batch job held back may run now

    def _take(self, slot: _Slot) -> _Pending | None:
        """The next job for `slot`, now marked as its job; None on close()."""
        with self._lock:
            while not self._stopping.is_set():
                pending = self._pop_live()
                if pending is not None:
                    slot.job = pending
                    return pending
                self._lock.wait(_IDLE_CHECK_S)
                if slot.process is not None and not slot.process.is_alive():
                    raise _WorkerDied(_exit_text(slot.process))
        return None

    def _pop_live(self) -> _Pending | None:
        """The first queued job still wanted and in time; late ones are failed on the way.
        With two workers or more, batch jobs run on all but one of them: a command arriving
        while batch work (Wyoming, transcriptions) is under way finds a worker free."""
        while self._queue:
            if self._queue[0][2].priority == "batch" and not self._batch_may_run():
                return None
            _, _, pending = heapq.heappop(self._queue)
            if not pending.started:
                if not pending.future.set_running_or_notify_cancel():
                    continue  # the client went away
                pending.started = True
            if clock.monotonic() >= pending.deadline:
                _fail(pending, "the speech job waited past its deadline in the queue")
                continue
            return pending
        return None

    def _batch_may_run(self) -> bool:
        """Whether a worker may take a batch job now (called under the lock)."""
        batch = sum(s.job is not None and s.job.priority == "batch" for s in self._slots)
        return batch < max(1, len(self._slots) - 1)

    def _work(self, slot: _Slot, pending: _Pending) -> None:
        assert slot.conn is not None
        try:
            self._send(slot, pending.job)
            message = self._receive(slot, deadline=pending.deadline)
        except _Timeout:
            _fail(pending, f"no answer within stt_job_timeout_s ({self.options.job_timeout_s} s)")
            if slot.process is not None:
                slot.process.kill()  # busy with the job: it would not read a request to stop
            raise _WorkerDied("killed: a job ran past its deadline") from None
        except _WorkerDied as exc:
            self._retry_or_fail(pending, str(exc))
            raise
        except _Stopped:
            _fail(pending, "this node's speech service is shutting down")
            raise
        kind, value = message
        if kind == "ok" and isinstance(value, Recognition | Transcription):
            self._answer(pending, replace(value, node=self.node_id))
        else:
            _fail(pending, f"speech worker failed: {value}")

    def _send(self, slot: _Slot, job: Job) -> None:
        assert slot.conn is not None
        assert slot.process is not None
        try:
            slot.conn.send(job)
        except (OSError, EOFError):  # a broken pipe: it died between two jobs or just now
            slot.process.join(_EXIT_GRACE_S)
            raise _WorkerDied(_exit_text(slot.process)) from None

    def _receive(self, slot: _Slot, deadline: float | None) -> tuple[str, object]:
        """The worker's next message; _Timeout past `deadline`, _WorkerDied if it ended,
        _Stopped on close()."""
        assert slot.conn is not None
        assert slot.process is not None
        while True:
            if self._stopping.is_set():
                raise _Stopped
            wait_s = _IDLE_CHECK_S
            if deadline is not None:
                wait_s = min(wait_s, deadline - clock.monotonic())
                if wait_s <= 0:
                    raise _Timeout
            ready = wait([slot.conn, slot.process.sentinel], wait_s)
            if slot.conn in ready:
                try:
                    message = slot.conn.recv()
                except (EOFError, OSError):
                    raise _WorkerDied(_exit_text(slot.process)) from None
                assert isinstance(message, tuple)
                return message[0], message[1]
            if slot.process.sentinel in ready:
                raise _WorkerDied(_exit_text(slot.process))

    def _answer(self, pending: _Pending, result: Recognition | Transcription) -> None:
        if self._metrics is not None:  # counted before anyone hears the answer
            self._observe(pending, result)
        if not pending.future.done():
            pending.future.set_result(result)

    def _observe(self, pending: _Pending, result: Recognition | Transcription) -> None:
        assert self._metrics is not None
        seconds = clock.monotonic() - pending.submitted
        kind = pending.job.kind
        self._metrics.speech_seconds.labels(result.model, self.node_id, kind).observe(seconds)
        if isinstance(result, Recognition):
            outcome = "accepted" if result.intent is not None else "rejected"
            if result.rejection == "no_speech":
                outcome = "no_speech"
            self._metrics.speech_results.labels(outcome).inc()
            if result.intent is not None:
                self._metrics.speech_intents.labels(result.intent).inc()

    def _retry_or_fail(self, pending: _Pending, why: str) -> None:
        if pending.retried or self._stopping.is_set():
            _fail(pending, f"the speech worker died on this job twice ({why})")
            return
        pending.retried = True
        with self._lock:
            self._push(pending)  # its old place: before anything of its priority waiting now

    def _worker_died(self, slot: _Slot, why: str) -> None:
        text = f"worker {slot.index} {why}"
        log.warning("speech %s; starting it again", text)
        with self._lock:
            self._counters.restarts += 1
            self._counters.last_restart = text
            slot.state = "starting"
        if self._metrics is not None:
            self._metrics.speech_worker_restarts.inc()

    def _fail_queue_if_none_ready(self) -> None:
        with self._lock:
            if any(s.state in ("ready", "starting") for s in self._slots):
                return
            waiting, self._queue = self._queue, []
            reason = self._not_ready_reason()
        for _, _, pending in waiting:
            _fail(pending, f"speech not ready: {reason}")

    def _stop_worker(self, slot: _Slot) -> None:
        process, conn = slot.process, slot.conn
        if process is None or conn is None:
            return
        if process.pid is not None:  # started
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            process.join(_EXIT_GRACE_S if process.is_alive() else 0)
            if process.is_alive():
                process.kill()
                process.join(_EXIT_GRACE_S)
            process.close()
        conn.close()
        with self._lock:
            slot.process, slot.conn = None, None
            if slot.state == "ready":
                slot.state = "starting"


class _Timeout(Exception):
    """The job's deadline passed with the worker still busy."""


class _Stopped(Exception):
    """close() was called, or the worker could not load: stop serving with this process."""


def _fail(pending: _Pending, reason: str, retry_after_s: float = 1.0) -> None:
    if not pending.future.done():
        pending.future.set_exception(SpeechUnavailable(reason, retry_after_s=retry_after_s))


def _exit_text(process: BaseProcess) -> str:
    """Why a worker's pipe ended. Called on the slot's own thread: a worker that has just died
    closes its pipe a moment before it can be reaped (CI: a SIGKILL once read "stopped
    answering"), so wait up to `_REAP_WAIT_S` for its exit status before calling it hung."""
    code = process.exitcode
    if code is None:
        process.join(_REAP_WAIT_S)
        code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"died of {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _samples(audio: Audio) -> Audio:
    """`audio` as a contiguous float32 array, what the workers take."""
    return np.ascontiguousarray(audio, dtype=np.float32)
