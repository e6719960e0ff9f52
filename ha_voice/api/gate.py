"""Between accept() and HTTP: admission by connection shares, TLS under the head's deadline.

Every connection the API socket accepts meets a `_Gate` first (the protocol the server is
created with), which
1. admits it or refuses it (admission.py). A refused connection is answered 503 at once (plain
   HTTP) or closed at once (TLS: nothing can be said before a handshake); its descriptor is
   freed in the same loop turn: nothing is read and nothing lingers.
2. With TLS, runs the handshake (`loop.start_tls`) bounded by `header_timeout_s`, counted as a
   connection all the while. asyncio's own server-side TLS would hide the connection from us
   until its handshake ended, and waits 60 s for one.
3. Hands the transport to the HTTP protocol (connections.py), which gives the admission back
   when the connection closes.

Invariants:
- Every admission is given back exactly once: by the HTTP protocol's `connection_lost`, or
  here when the handshake does not end in a connection.
- Members are the addresses the node's view knows its peers by (view.member_hosts), read at
  each accept, so a peer found later by mDNS counts at once.
- What the TLS layer delivers between the end of the handshake and the hand-over (data, EOF,
  the connection lost) is kept and given to the HTTP protocol in order.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import ssl
from collections.abc import Callable, Collection

from ha_voice.api.admission import Admission, Refusal
from ha_voice.api.connections import BoundedH11Protocol, ConnectionLimits
from ha_voice.api.problems import CLOSED_UNANSWERED, Refusals, problem_bytes

__all__ = ["Gates"]

log = logging.getLogger(__name__)

_RETRY_AFTER_S = 1.0  # the header's least; a held connection closes within the head deadline


class Gates:
    """The server's protocol factory: one `_Gate` per accepted connection, and what they share."""

    def __init__(
        self,
        limits: ConnectionLimits,
        refusals: Refusals,
        members: Callable[[], Collection[str]],
        make_http: Callable[[], BoundedH11Protocol],
        tls: ssl.SSLContext | None,
        node: str,
    ) -> None:
        self.limits = limits
        self.refusals = refusals
        self.admission = Admission(
            limits.max_connections,
            limits.max_connections_per_client,
            limits.member_connections,
            node=node,
        )
        self.members = members
        self.tls = tls
        self._make_http = make_http
        self._handshaking: set[_Gate] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    async def aclose(self) -> None:
        """End every handshake under way (the server is stopping) and wait for their tasks."""
        gates = list(self._handshaking)
        for gate in gates:
            gate.abort()
        tasks = [gate.task for gate in gates if gate.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def refuse(self, transport: asyncio.Transport, refusal: Refusal) -> None:
        """Answer 503 (plain HTTP) or nothing (TLS), and close at once."""
        if self.tls is None:
            self.refusals.note_connection(503, refusal.reason, refusal.error)
            transport.write(_unavailable(refusal.error))
        else:
            self.refusals.note_connection(CLOSED_UNANSWERED, refusal.reason, refusal.error)
        transport.close()

    def hand_over(
        self,
        transport: asyncio.Transport,
        accepted_at: float,
        release: Callable[[], None],
        early: _Gate | None = None,
    ) -> None:
        """Give `transport` to a new HTTP protocol, with what `early` kept for it."""
        protocol = self._make_http()
        protocol.admitted(accepted_at, release)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if early is not None:
            early.replay(protocol)

    def handshake_failed(self, exc: OSError) -> None:
        """Count a handshake that ended without a connection (a client gone is not counted)."""
        if isinstance(exc, ConnectionAbortedError):  # asyncio's handshake timeout
            error = f"TLS handshake not complete within {self.limits.header_timeout_s:g} s"
            self.refusals.note_connection(CLOSED_UNANSWERED, "tls_handshake_timeout", error)
        elif isinstance(exc, ssl.SSLError):
            error = f"TLS handshake failed ({exc.reason or type(exc).__name__})"
            self.refusals.note_connection(CLOSED_UNANSWERED, "tls_handshake_failed", error)


class _Gate(asyncio.Protocol):
    """One accepted connection until the HTTP protocol has it."""

    def __init__(self, gates: Gates) -> None:
        self._gates = gates
        self._transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self._data: list[bytes] = []
        self._eof = False
        self._lost: list[Exception | None] = []
        self._http: asyncio.Protocol | None = None  # once handed over, events go straight on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        gates = self._gates
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        decision = gates.admission.admit(host, host in gates.members())
        if isinstance(decision, Refusal):
            gates.refuse(transport, decision)
            return
        loop = asyncio.get_running_loop()
        release = functools.partial(gates.admission.release, decision)
        if gates.tls is None:
            gates.hand_over(transport, loop.time(), release)
            return
        self._transport = transport
        gates._handshaking.add(self)
        self.task = loop.create_task(self._handshake(transport, gates.tls, loop.time(), release))

    async def _handshake(
        self,
        transport: asyncio.Transport,
        tls: ssl.SSLContext,
        accepted_at: float,
        release: Callable[[], None],
    ) -> None:
        gates = self._gates
        loop = asyncio.get_running_loop()
        try:
            wrapped = await loop.start_tls(
                transport,
                self,
                tls,
                server_side=True,
                ssl_handshake_timeout=gates.limits.header_timeout_s,
            )
        except OSError as exc:  # start_tls closed the connection
            release()
            gates.handshake_failed(exc)
            return
        except BaseException:
            release()
            raise
        finally:
            gates._handshaking.discard(self)
        if wrapped is None:  # aborted by `abort` while in the handshake
            release()
            return
        gates.hand_over(wrapped, accepted_at, release, early=self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # What the TLS layer delivers after the handshake and before the hand-over is kept in
    # order; what it had scheduled for us before the hand-over and delivers after goes on.

    def data_received(self, data: bytes) -> None:
        if self._http is not None:
            self._http.data_received(data)
        else:
            self._data.append(data)

    def eof_received(self) -> bool | None:
        if self._http is not None:
            return self._http.eof_received()
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._http is not None:
            self._http.connection_lost(exc)
        else:
            self._lost.append(exc)

    def replay(self, protocol: asyncio.Protocol) -> None:
        """Give `protocol` what arrived for it before it had the transport, and from now on
        whatever still comes here."""
        self._http = protocol
        data, self._data = self._data, []
        for chunk in data:
            protocol.data_received(chunk)
        if self._eof:
            protocol.eof_received()
        for exc in self._lost:
            protocol.connection_lost(exc)


def _unavailable(error: str) -> bytes:
    """A whole 503 answer (head and `ErrorBody`) that closes the connection."""
    body = problem_bytes(503, error, retry_after_s=_RETRY_AFTER_S)
    head = [
        f"HTTP/1.1 503 {http.HTTPStatus(503).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        f"retry-after: {int(_RETRY_AFTER_S)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
