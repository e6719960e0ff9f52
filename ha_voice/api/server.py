"""The HTTP server of one daemon: uvicorn inside the daemon's event loop, on a socket we bind.

Invariants:
- Signals belong to the daemon, not to uvicorn (`capture_signals` is a no-op).
- The listening socket is bound before uvicorn starts, so a port in use fails the start with the
  OS's own words; connections that come before uvicorn has started wait in the listen backlog.
- TCP_NODELAY on every accepted connection (see `listen`).
- Building the server loads what the API refuses a start over: the token file and the cluster
  keys of the authentication (auth.py) and the TLS certificate and key (tls.py), each a
  ConfigError naming the key and the fix.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from ha_voice.api.auth import Authenticator, install
from ha_voice.api.tls import client_context, server_options
from ha_voice.config import Config

__all__ = ["EmbeddedServer", "build_server", "check_secrets", "listen"]


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: signals are the daemon's, not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(config: Config, app: FastAPI) -> tuple[EmbeddedServer, socket.socket]:
    """The server for `app` and its bound, listening socket; `server.serve(sockets=[sock])`.
    ConfigError if the tokens, the keys or the TLS pair are missing, exposed or malformed."""
    install(app, config)
    server = EmbeddedServer(
        uvicorn.Config(
            app,
            host=config.listen_address,
            port=config.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            **server_options(config),
        )
    )
    return server, listen(config.listen_address, config.port)


def check_secrets(config: Config) -> None:
    """Load what `build_server` will, so that a start is refused before anything runs:
    ConfigError if a key, the tokens or the TLS files are missing, exposed or malformed."""
    Authenticator.from_config(config)
    server_options(config)
    client_context(config)


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
