"""The HTTP server of one daemon: uvicorn inside the daemon's event loop, on a socket we bind.

Invariants:
- Signals belong to the daemon, not to uvicorn (`capture_signals` is a no-op).
- The listening socket is bound before uvicorn starts, so a port in use fails the start with the
  OS's own words; connections that come before uvicorn has started wait in the listen backlog.
- TCP_NODELAY on every accepted connection (see `listen`).
- Building the server loads what the API refuses a start over: the token file and the cluster
  keys of the authentication (auth.py) and the TLS certificate and key (tls.py), each a
  ConfigError naming the key and the fix.
- Every connection meets our gate first (gate.py: a share per client, a pool for members, the
  TLS handshake under the head deadline), then our HTTP protocol (connections.py: header, body
  and idle deadlines). uvicorn's startup is replaced for that alone: it creates the server
  with its own protocol and asyncio's TLS, which hides a connection until its handshake ends.
- The soft open-file limit is raised to the hard limit at start, and the connection pools are
  sized to fit under it with room to spare, so that our caps refuse connections, never the
  kernel (EMFILE). What asyncio reports about connections is counted and throttled
  (loop_errors.py).
- Client addresses are the sockets' own: X-Forwarded-For is not believed (no proxy sits in
  front of a node; a local process could otherwise pose as any address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import socket
from collections.abc import Callable, Collection, Iterator
from typing import Final

import uvicorn
from fastapi import FastAPI

from ha_voice.api.auth import Authenticator, install
from ha_voice.api.connections import (
    MAX_HEAD_BYTES,
    BoundedH11Protocol,
    ConnectionLimits,
    bounded_protocol,
    quiet_uvicorn_warnings,
)
from ha_voice.api.gate import Gates
from ha_voice.api.loop_errors import ConnectionErrorHandler
from ha_voice.api.problems import Refusals
from ha_voice.api.tls import client_context, server_options
from ha_voice.api.view import member_hosts
from ha_voice.config import Config

__all__ = ["EmbeddedServer", "build_server", "check_secrets", "connection_limits", "listen"]

log = logging.getLogger(__name__)

# The kernel's queue of connections not yet accepted. asyncio also accepts up to this many per
# wake-up, each holding a descriptor until the gate admits or refuses it (the same turn).
_BACKLOG: Final = 128
# Descriptors the daemon needs besides the API's connections: SQLite, UDP, mDNS, the robot,
# logs (128); a backup's forwards to the primary (httpx's pool: at most 100); connections
# accepted and not yet judged (two accept batches: one being judged, the next accepted).
_FD_HEADROOM: Final = 128 + 100 + 2 * _BACKLOG


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: signals are the daemon's, and connections meet our gate."""

    def __init__(
        self,
        config: uvicorn.Config,
        limits: ConnectionLimits,
        refusals: Refusals,
        members: Callable[[], Collection[str]],
        errors: ConnectionErrorHandler,
        node: str,
    ) -> None:
        super().__init__(config)
        self._node = node
        self._limits = limits
        self._refusals = refusals
        self._members = members
        self._errors = errors
        self._http: type[BoundedH11Protocol] = bounded_protocol(limits, refusals)
        self.gates: Gates | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve `sockets` with our gate as the protocol (TLS included): uvicorn's startup
        for the sockets case, without asyncio's server-side TLS."""
        assert sockets, "the daemon binds the API socket itself (build_server)"
        await self.lifespan.startup()  # lifespan="off": nothing to start
        loop = asyncio.get_running_loop()
        self._errors.install(loop)
        config, http = self.config, self._http

        def make_http() -> BoundedH11Protocol:
            return http(config, self.server_state, self.lifespan.state, loop)

        self.gates = Gates(
            self._limits, self._refusals, self._members, make_http, config.ssl, self._node
        )
        self.servers = [
            await loop.create_server(self.gates, sock=sock, backlog=_BACKLOG) for sock in sockets
        ]
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, end the handshakes under way, then uvicorn's shutdown."""
        for server in self.servers:
            server.close()
        if self.gates is not None:
            await self.gates.aclose()
        try:
            await super().shutdown(sockets)
        finally:
            self._errors.uninstall(asyncio.get_running_loop())


def build_server(config: Config, app: FastAPI) -> tuple[EmbeddedServer, socket.socket]:
    """The server for `app` and its bound, listening socket; `server.serve(sockets=[sock])`.
    ConfigError if the tokens, the keys or the TLS pair are missing, exposed or malformed.
    `app` has its error handling installed (problems.install); its `state.ctx`, if any, says
    who the members are."""
    install(app, config)
    limits = connection_limits(config)
    quiet_uvicorn_warnings()
    refusals: Refusals = app.state.refusals
    ctx = getattr(app.state, "ctx", None)
    members: Callable[[], Collection[str]] = frozenset if ctx is None else lambda: member_hosts(ctx)
    server = EmbeddedServer(
        uvicorn.Config(
            app,
            host=config.api_listen_address,
            port=config.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            **server_options(config),
            http=bounded_protocol(limits, refusals),
            ws="none",
            proxy_headers=False,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            # Our protocol closes idle connections; uvicorn's own timer is a backstop behind it.
            timeout_keep_alive=math.ceil(limits.keepalive_timeout_s) + 1,
        ),
        limits,
        refusals,
        members,
        ConnectionErrorHandler(refusals.registry, refusals),
        config.node_id,
    )
    return server, listen(config.api_listen_address, config.port)


def check_secrets(config: Config) -> None:
    """Load what `build_server` will, so that a start is refused before anything runs:
    ConfigError if a key, the tokens or the TLS files are missing, exposed or malformed."""
    Authenticator.from_config(config)
    server_options(config)
    client_context(config)


def connection_limits(config: Config) -> ConnectionLimits:
    """The configured deadlines and shares, with pools the open-file limit can hold."""
    pool = _fit_open_files(config.api_max_connections)
    return ConnectionLimits(
        header_timeout_s=config.api_header_timeout_s,
        body_timeout_s=config.api_body_timeout_s,
        keepalive_timeout_s=config.api_keepalive_timeout_s,
        max_connections=pool,
        max_connections_per_client=config.api_max_connections_per_client,
        # Forwards need far fewer (a backup holds at most 100); as many as the clients may
        # hold keeps one knob, and a local test cluster's clients share the members' address.
        member_connections=pool,
    )


def _fit_open_files(wanted: int) -> int:
    """Raise the soft open-file limit to the hard one; the size of each pool (clients',
    members') up to `wanted` that fits under it with `_FD_HEADROOM` to spare."""
    was, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if was != hard:
        with contextlib.suppress(ValueError, OSError):  # an infinite hard limit cannot be had
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = wanted if soft == resource.RLIM_INFINITY else (soft - _FD_HEADROOM) // 2
    pool = max(8, min(wanted, room))
    log.info(
        "open-file limit %s (soft; was %s, hard %s): room for %d client and %d member connections",
        _limit_text(soft),
        _limit_text(was),
        _limit_text(hard),
        pool,
        pool,
    )
    if pool < wanted:
        log.warning(
            "api_max_connections %d does not fit the open-file limit %s: holding %d; raise "
            "LimitNOFILE= in the unit file to at least %d to hold more",
            wanted,
            _limit_text(soft),
            pool,
            2 * wanted + _FD_HEADROOM,
        )
    return pool


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket on (host, port); OSError if the port is taken."""
    # IPPROTO_TCP, and TCP_NODELAY inherited by every accepted connection: asyncio sets
    # NODELAY only on sockets whose protocol says TCP, and without it uvicorn's separate header
    # and body writes meet Nagle and the client's delayed ACK — 40 ms on every kept-alive request.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(_BACKLOG)
    return sock
