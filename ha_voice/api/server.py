"""The HTTP server of one daemon: uvicorn inside the daemon's event loop, on a socket we bind.

Invariants:
- Signals belong to the daemon, not to uvicorn (`capture_signals` is a no-op).
- The listening socket is bound before uvicorn starts, so a port in use fails the start with the
  OS's own words; connections that come before uvicorn has started wait in the listen backlog.
- TCP_NODELAY on every accepted connection (see `listen`).
- Building the server loads what the API refuses a start over: the token file and the cluster
  keys of the authentication (auth.py) and the TLS certificate and key (tls.py), each a
  ConfigError naming the key and the fix.
- Every connection is bounded (`connections.py`): header, body and idle deadlines and a cap on
  open connections that fits under the open-file limit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from ha_voice.api.auth import Authenticator, install
from ha_voice.api.connections import ConnectionLimits, bounded_protocol, quiet_uvicorn_warnings
from ha_voice.api.tls import client_context, server_options
from ha_voice.config import Config

__all__ = ["EmbeddedServer", "build_server", "check_secrets", "connection_limits", "listen"]

log = logging.getLogger(__name__)

# Descriptors the daemon needs besides HTTP connections: SQLite, UDP, mDNS, the robot, logs.
_FD_HEADROOM = 128
# h11's default: a request head larger than this is refused (400) before it is parsed.
_MAX_HEAD_BYTES = 16_384


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: signals are the daemon's, not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(config: Config, app: FastAPI) -> tuple[EmbeddedServer, socket.socket]:
    """The server for `app` and its bound, listening socket; `server.serve(sockets=[sock])`.
    ConfigError if the tokens, the keys or the TLS pair are missing, exposed or malformed."""
    install(app, config)
    limits = connection_limits(config)
    quiet_uvicorn_warnings()
    server = EmbeddedServer(
        uvicorn.Config(
            app,
            host=config.listen_address,
            port=config.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            **server_options(config),
            http=bounded_protocol(limits),
            ws="none",
            h11_max_incomplete_event_size=_MAX_HEAD_BYTES,
            # Our protocol closes idle connections; uvicorn's own timer is a backstop behind it.
            timeout_keep_alive=math.ceil(limits.keepalive_timeout_s) + 1,
        )
    )
    return server, listen(config.listen_address, config.port)


def check_secrets(config: Config) -> None:
    """Load what `build_server` will, so that a start is refused before anything runs:
    ConfigError if a key, the tokens or the TLS files are missing, exposed or malformed."""
    Authenticator.from_config(config)
    server_options(config)
    client_context(config)


def connection_limits(config: Config) -> ConnectionLimits:
    """The configured deadlines, and a connection cap the open-file limit can hold."""
    return ConnectionLimits(
        header_timeout_s=config.api_header_timeout_s,
        body_timeout_s=config.api_body_timeout_s,
        keepalive_timeout_s=config.api_keepalive_timeout_s,
        max_connections=_fit_open_files(config.api_max_connections),
    )


def _fit_open_files(wanted: int) -> int:
    """Raise the soft open-file limit to hold `wanted` connections; the cap it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + _FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        ceiling = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    allowed = max(8, soft - _FD_HEADROOM)
    log.warning(
        "api_max_connections %d does not fit the open-file limit %d: holding %d; raise "
        "LimitNOFILE= in the unit file to hold more",
        wanted,
        soft,
        allowed,
    )
    return allowed


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
    sock.listen(128)
    return sock
