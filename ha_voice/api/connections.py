"""HTTP/1.1 connections with bounded reads: uvicorn's h11 protocol plus deadlines.

A connection reaches this protocol admitted (gate.py: the connection shares, the TLS
handshake); it gives back its admission when it is closed. uvicorn's h11 protocol times only
the idle gap after an answer; a client that never finishes its request head, or its body, is
held for ever. This subclass gives every phase of a connection one deadline:

- head: from the accept (a TLS handshake included), or from the first byte of a later request,
  until the request head is complete (`header_timeout_s`); then 408.
- body: from the head until the body is complete (`body_timeout_s`); then 408.
- idle: after an answer, until the next request begins (`keepalive_timeout_s`); then closed.
- linger: an answer was sent while the client was still sending a body nobody reads (413, 415,
  429, a GET with a body): the answer says `Connection: close`, and then we half-close, discard
  what still arrives for at most `linger_s` or `linger_bytes`, and close. Closing at once would
  make the kernel reset the connection and the client could lose the answer (nginx's
  lingering_close does the same); keeping the connection would mean reading that body.

While the application works on a complete request nothing is timed: a `move` may take 60 s.
Every head is judged before the application sees it (request_head.py: 431 over
`max_head_bytes`, 400 for a single header sent twice). Errors written here are the same JSON
`ErrorBody` the routes answer with, and each is counted in `ha_voice_api_refusals_total`.
Nothing a client does makes a callback of this protocol raise: an OS error on a dead socket
closes the connection.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import h11
from uvicorn._types import (
    ASGI3Application,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from ha_voice.api.problems import Refusals, problem_bytes
from ha_voice.api.request_head import judge_head

__all__ = ["BoundedH11Protocol", "ConnectionLimits", "bounded_protocol", "quiet_uvicorn_warnings"]

log = logging.getLogger(__name__)

# nginx's lingering_time is 30 s; ours only has to cover the round trip of an answer on a LAN.
_LINGER_S: Final = 2.0
# Clients that send the whole body before reading (httpx, requests) get their 413 for a body of
# up to this size (measured: 5 MB bodies got 413 with 8 MiB, a connection reset with 1 MiB);
# discarding costs a copy per 64 KiB, no parsing.
_LINGER_BYTES: Final = 8 << 20


# h11's default bound on an incomplete event; the documented limit on a request head.
MAX_HEAD_BYTES: Final = 16_384


@dataclass(frozen=True)
class ConnectionLimits:
    """The deadlines of each phase of a connection (seconds), the connection shares and the
    largest request head."""

    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int  # the clients' pool
    max_connections_per_client: int
    member_connections: int  # the members' pool, apart from the clients'
    max_head_bytes: int = MAX_HEAD_BYTES
    linger_s: float = _LINGER_S
    linger_bytes: int = _LINGER_BYTES


class _Phase(enum.Enum):
    HEAD = "head"
    BODY = "body"
    IDLE = "idle"
    LINGER = "linger"


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each phase; made by gate.py for a connection
    it admitted (`admitted` before `connection_made`)."""

    limits: ClassVar[ConnectionLimits]
    refusals: ClassVar[Refusals]

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.app = self._judged(self.app)
        self._phase: _Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._discarded = 0
        self._lost = False
        self._accepted_at = self.loop.time()
        self._release: Callable[[], None] | None = None

    def admitted(self, accepted_at: float, release: Callable[[], None]) -> None:
        """This connection was accepted at `accepted_at` (the loop's clock); `release` gives its
        admission back, once, when it closes."""
        self._accepted_at = accepted_at
        self._release = release

    # --- uvicorn's hooks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._socket = transport  # ours to close; uvicorn's closes go through `_close`
        super().connection_made(_LingeringTransport(transport, self._close))
        # The head's deadline runs from the accept: a TLS handshake spends it too.
        spent_s = self.loop.time() - self._accepted_at
        self._arm(_Phase.HEAD, max(0.0, self.limits.header_timeout_s - spent_s))

    def data_received(self, data: bytes) -> None:
        if self._phase is _Phase.LINGER:
            self._discard(len(data))
            return
        if self._phase is _Phase.IDLE:  # the first byte of the next request
            self._arm(_Phase.HEAD, self.limits.header_timeout_s)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm()
        release, self._release = self._release, None
        if release is not None:
            release()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse the request: 431 if its head outgrew the limit before it was
        complete (h11's `max_incomplete_event_size`), else 400."""
        unparsed, _ = self.conn.trailing_data
        limit = self.limits.max_head_bytes
        if len(unparsed) > limit:
            error = f"request line and headers are over the limit of {limit} bytes"
            self._answer_and_linger(431, "head_too_large", error)
        else:
            error = "not an HTTP/1.1 request h11 can parse"
            self._answer_and_linger(400, "bad_http", error)

    # --- phases ----------------------------------------------------------------------------

    def _follow(self) -> None:
        """Move to the phase the h11 state machine is in now (lingering is final)."""
        if self._phase is _Phase.LINGER or self.transport.is_closing():
            return
        theirs, ours = self.conn.their_state, self.conn.our_state
        if theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE):
            self._linger()
        elif theirs is h11.SEND_BODY:
            if self._phase is not _Phase.BODY:
                self._arm(_Phase.BODY, self.limits.body_timeout_s)
        elif theirs is h11.IDLE:
            if self._phase is not _Phase.HEAD:
                self._arm(_Phase.IDLE, self.limits.keepalive_timeout_s)
        else:  # the request is complete: the application's time is not ours to bound
            self._disarm()

    def _arm(self, phase: _Phase, timeout_s: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(timeout_s, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = None

    def _expired(self, phase: _Phase) -> None:
        self._deadline = None
        if phase is _Phase.HEAD:
            late = self._late("request head", self.limits.header_timeout_s)
            self._answer_and_linger(408, "head_timeout", late)
        elif phase is _Phase.BODY and not (self.cycle and self.cycle.response_started):
            late = self._late("request body", self.limits.body_timeout_s)
            self._answer_and_linger(408, "body_timeout", late)
        else:
            self._socket.close()

    @staticmethod
    def _late(what: str, timeout_s: float) -> str:
        return f"{what} not complete within {timeout_s:g} s; send it at once"

    # --- answers written here --------------------------------------------------------------

    def _answer_and_linger(self, status: int, reason: str, error: str, **details: Any) -> None:
        """Write an error answer ourselves (no route runs), count it, then close gently."""
        self.refusals.note_connection(status, reason, error)
        if self.cycle is not None and not self.cycle.response_complete:
            # The application must not write after us; its reads end as for a client gone.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = problem_bytes(status, error, **details)
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        if "retry_after_s" in details:
            headers.append(("retry-after", str(math.ceil(details["retry_after_s"]))))
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
        head += [f"{name}: {value}" for name, value in headers]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        self._linger()

    def _linger(self) -> None:
        """Half-close, discard what the client still sends for a while, then close."""
        if self._phase is _Phase.LINGER:
            return
        self._arm(_Phase.LINGER, self.limits.linger_s)
        self.flow.resume_reading()
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except OSError:  # the client is gone already (ENOTCONN): nothing to linger for
            self._socket.close()

    def _close(self) -> None:
        """uvicorn closes the connection: gently if the client may still be sending a body."""
        if not self._lost and self.conn.their_state is h11.SEND_BODY:
            self._linger()
        else:
            self._socket.close()

    def _judged(self, app: ASGI3Application) -> ASGI3Application:
        """`app` behind the head's judgement (request_head.py), its answers saying
        `Connection: close` if the request body was not all read (so the client does not
        send its next request on a connection we will close)."""

        async def wrapped(
            scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            async def send_closing(message: ASGISendEvent) -> None:
                if (
                    message["type"] == "http.response.start"
                    and self.conn.their_state is h11.SEND_BODY
                ):
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
                await send(message)

            if scope["type"] == "http":
                target = len(scope["raw_path"]) + 1 + len(scope["query_string"])
                refused = judge_head(
                    scope["method"], target, list(scope["headers"]), self.limits.max_head_bytes
                )
                if refused is not None:
                    self.refusals.note_connection(refused.status, refused.reason, refused.error)
                    await _send_problem(send_closing, refused.status, refused.error)
                    return
            await app(scope, receive, send_closing)

        return wrapped

    def _discard(self, size: int) -> None:
        self._discarded += size
        if self._discarded > self.limits.linger_bytes:
            self._socket.close()


class _LingeringTransport(asyncio.Transport):
    """The connection's transport as uvicorn sees it: `close` is the protocol's to decide
    (`on_close` closes at once or lingers); everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, on_close: Callable[[], None]) -> None:
        super().__init__()
        self._transport = transport
        self._on_close = on_close
        self._closing = False

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._on_close()

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def abort(self) -> None:
        self._transport.abort()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


async def _send_problem(send: ASGISendCallable, status: int, error: str) -> None:
    """An `ErrorBody` answer through ASGI, before (instead of) the application."""
    body = problem_bytes(status, error)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def bounded_protocol(limits: ConnectionLimits, refusals: Refusals) -> type[BoundedH11Protocol]:
    """The protocol class to pass as uvicorn's `http`, bound to `limits`, counting its
    refusals in `refusals`."""
    attributes = {"limits": limits, "refusals": refusals}
    return type("BoundedH11Protocol", (BoundedH11Protocol,), attributes)


class _OnceThenDebug(logging.Filter):
    """Each distinct uvicorn warning at warning level once, then at debug: a client that
    sends bad requests in a loop must not flood the log."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            if record.msg in self._seen:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
            self._seen.add(str(record.msg))
        return True


def quiet_uvicorn_warnings() -> None:
    """Install the once-then-debug filter on uvicorn's error log (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _OnceThenDebug) for f in logger.filters):
        logger.addFilter(_OnceThenDebug())
