"""A daemon that cannot do its job ends, loudly, so that systemd starts it again.

Every long-lived task and thread the node depends on is watched: if one ends with an exception,
or ends at all when it should run for ever, the traceback is logged at critical and the process
exits with EX_SOFTWARE (70). A half-dead node that still answers `/health` and feeds the
watchdog is worse than a restart.

Log calls only put records on a queue, which one thread writes out (the stdlib logging
cookbook's QueueHandler/QueueListener): a slow journald or a full pipe never holds the election
core or a request. Before the process ends, that queue is written out.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import queue
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["EXIT_FAILED", "exit_now", "fatal", "guarded", "log_through_a_queue", "must_not_end"]

log = logging.getLogger(__name__)

EXIT_FAILED = 70  # EX_SOFTWARE
_listeners: list[logging.handlers.QueueListener] = []


def log_through_a_queue(level: str) -> logging.handlers.QueueListener:
    """Make every log call only enqueue; one thread writes to stderr. Stop it at exit."""
    output = logging.StreamHandler()
    output.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level)
    listener = logging.handlers.QueueListener(records, output, respect_handler_level=True)
    listener.start()
    _listeners.append(listener)
    return listener


def fatal(exc: BaseException, what: str) -> NoReturn:
    """`what` failed with `exc`: log it with its traceback and exit (70)."""
    log.critical(
        "%s failed; exiting so that systemd restarts this node",
        what,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    exit_now(EXIT_FAILED)


def exit_now(status: int) -> NoReturn:
    """Write out what the log queue holds, then end the process at once with `status`."""
    for listener in _listeners:
        listener.stop()
    logging.shutdown()
    os._exit(status)


def guarded(fn: Callable[..., None], *args: Any) -> None:
    """Run `fn(*args)` as a loop callback: asyncio would only log its exception and go on, so an
    exception here is fatal (the core's outputs and inputs cross threads this way)."""
    try:
        fn(*args)
    except Exception as exc:
        fatal(exc, f"callback {getattr(fn, '__qualname__', fn)!r}")


def must_not_end(task: asyncio.Task[Any]) -> None:
    """Done-callback for a task that runs for ever: its end, unless cancelled, is fatal."""
    if task.cancelled():
        return
    exc = task.exception() or RuntimeError(f"task {task.get_name()!r} returned")
    fatal(exc, f"task {task.get_name()!r}")
