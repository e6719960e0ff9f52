"""HTTPS for the API: the server's certificate, and the CA a forwarding backup verifies with.

Invariants:
- TLS is a cluster-wide choice: with `tls_cert_file` set a node serves HTTPS only, and speaks
  HTTPS to its peers (forwards, the `leader_url` hints it gives), verifying their certificates
  against `tls_ca_file` — host names and IP addresses alike, so node certificates name the
  IP addresses peers reach them at (subjectAltName IP entries).
- The certificate and key are loaded when the server is built, so a wrong path, a key that does
  not match or an exposed key refuses the start with a ConfigError, never a dead API later.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ha_voice.api.context import ApiContext
from ha_voice.config import Config
from ha_voice.errors import ConfigError
from ha_voice.keyfiles import read_private

__all__ = ["api_scheme", "client_context", "leader_url", "server_options"]


def api_scheme(config: Config) -> str:
    """`https` when this node (and so the cluster) serves TLS, else `http`."""
    return "https" if config.tls_cert_file is not None else "http"


def leader_url(ctx: ApiContext) -> str | None:
    """The primary's API URL as this node knows it, in the cluster's scheme; None if unknown."""
    return ctx.node.leader_url(ctx.config.port, api_scheme(ctx.config))


def server_options(config: Config) -> dict[str, Any]:
    """uvicorn.Config keywords for HTTPS ({} for HTTP); ConfigError if the pair is unusable."""
    cert, key = config.tls_cert_file, config.tls_key_file
    if cert is None or key is None:
        return {}
    _check_key(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_cert_file = {str(cert)!r}, tls_key_file = {str(key)!r}: cannot be loaded "
            f"({exc}); allowed: a PEM certificate and its unencrypted PEM private key; fix: "
            "make them as docs/operations.md, 'TLS for the API', shows"
        ) from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def client_context(config: Config) -> ssl.SSLContext | None:
    """What a backup verifies the primary with (`tls_ca_file`), or None without TLS."""
    if config.tls_ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(config.tls_ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_ca_file = {str(config.tls_ca_file)!r}: cannot be loaded ({exc}); allowed: "
            "PEM CA certificates; fix: point it at the cluster CA's ca.crt"
        ) from None


def _check_key(path: Path) -> None:
    try:
        read_private(path, "tls_key_file")
    except OSError as exc:
        raise ConfigError(
            f"tls_key_file = {str(path)!r}: cannot be read ({exc.strerror}); fix: let the user "
            f"ha-voice runs as read it (chown it, chmod 600 {path})"
        ) from None
