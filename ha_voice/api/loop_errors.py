"""What asyncio reports about connections, throttled: counted, and logged once a minute at most.

asyncio hands every error it cannot raise to the loop's exception handler, whose default logs
it with its traceback: an accept() that finds no free descriptor (EMFILE) once per retry, an
exception in a transport's or protocol's callback once per connection (measured under a
flood: 180 856 tracebacks, 80 MB, in 20 s). This handler takes the ones about connections:

- an accept() that failed is counted as a refusal (`ha_voice_api_refusals_total`, status 444,
  reason `accept_<errno>`): the connection waits in the kernel's backlog, or is dropped;
- an exception in a connection's callback is counted in
  `ha_voice_api_connection_errors_total{kind}`;
- each is logged through a `LogThrottle`: the first of a kind at warning with its traceback,
  then at debug, with a summary at most once a minute.

Anything else goes to the handler that was there before (asyncio's default: logged as before).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from ha_voice.api.log_throttle import LogThrottle
from ha_voice.api.problems import CLOSED_UNANSWERED, Refusals

__all__ = ["ConnectionErrorHandler"]

log = logging.getLogger(__name__)

_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's words (selector_events)


class ConnectionErrorHandler:
    """The loop's exception handler while the API serves: connection errors quietly."""

    def __init__(self, registry: CollectorRegistry, refusals: Refusals) -> None:
        self.counter = Counter(
            "ha_voice_api_connection_errors",
            "Exceptions asyncio reported in the callbacks of HTTP connections, by kind",
            ["kind"],
            registry=registry,
        )
        self._refusals = refusals
        self._log = LogThrottle(log, "connection errors")
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle `loop`'s errors here, passing on what is not about a connection."""
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self.handle)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put back the handler `install` found."""
        loop.set_exception_handler(self._previous)

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's exception handler: one report `context`."""
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if message == _ACCEPT_FAILED and isinstance(exc, OSError):
            reason = f"accept_{errno.errorcode.get(exc.errno or 0, 'error').lower()}"
            error = f"accept() failed: {exc.strerror or exc}; connections wait in the backlog"
            self._refusals.note_connection(CLOSED_UNANSWERED, reason, error)
            return
        if not _about_a_connection(context):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        kind = type(exc).__name__ if exc is not None else "error"
        self.counter.labels(kind).inc()
        self._log.note(kind, "HTTP connection: %s", message, exc_info=exc)


def _about_a_connection(context: dict[str, Any]) -> bool:
    """Whether asyncio's report concerns one connection: it names a transport or protocol, or
    the callback that raised is a method of one."""
    if isinstance(context.get("transport"), asyncio.BaseTransport):
        return True
    if isinstance(context.get("protocol"), asyncio.BaseProtocol):
        return True
    # asyncio.Handle keeps its callback private; a report of another kind has no `handle`.
    callback = getattr(context.get("handle"), "_callback", None)
    owner = getattr(callback, "__self__", None)
    return isinstance(owner, asyncio.BaseTransport | asyncio.BaseProtocol)
